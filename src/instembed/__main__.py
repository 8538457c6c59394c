from instembed.cli import main

raise SystemExit(main())
