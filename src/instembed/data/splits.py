"""Fixed, documented train/val splits of the shared real data sets (BBBC039, BBBC010, DSB2018).

Each split is made once, the same way, and its validation ids are recorded below so that it is
reproducible without the data (and stays fixed if the folder later gains images):

1. list the reader's item names (``Reader.items[i].name``: the image stem for BBBC039, the well
   id for BBBC010, the image id folder for DSB2018) and sort them;
2. permute them with ``numpy.random.default_rng(SEED).permutation`` (``SEED = 2026``);
3. the first ``round(VAL_FRACTION * n)`` names of the permutation are the validation set
   (``VAL_FRACTION = 0.2``), all other names are training.

Counts (shared copies): BBBC039 150 -> 120 train / 30 val; BBBC010 50 wells -> 40 / 10;
DSB2018 173 -> 138 / 35. The held-out test images of the project are not in these copies.

Use::

    reader = open_dataset("bbbc039")
    train, val = split_dataset(reader, "bbbc039")     # lazy views, samples load on access

:func:`make_split` recomputes a split from a list of names (steps 1-3); the test suite checks
that it reproduces :data:`VAL_IDS` on the shared data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SEED = 2026
VAL_FRACTION = 0.2

VAL_IDS: dict[str, tuple[str, ...]] = {
    "bbbc039": (  # 150 images -> 120 train / 30 val
        "IXMtest_B02_s9_w124B5080D-EBE1-47D2-B147-C0F342039EDF",
        "IXMtest_B04_s4_w1F6AEFA0F-AF87-4B3B-A334-698647CFE043",
        "IXMtest_B12_s2_w19F7E0279-D087-4B5E-9899-61971C29CB78",
        "IXMtest_B17_s7_w1215A0A98-4A76-4846-B54A-F7C1EAF84E02",
        "IXMtest_B21_s4_w1521471E0-9BD7-492A-8739-9C782C2585B0",
        "IXMtest_B21_s7_w1276972A2-1794-4A98-8E76-876A597C346B",
        "IXMtest_D06_s5_w13C67AAA9-6E81-42DB-AC5F-7126602F3607",
        "IXMtest_F08_s7_w117D78658-1BA7-495D-9EAA-E4FA155861AC",
        "IXMtest_F22_s6_w1D6C33377-3947-4DAC-B62D-531C2565F150",
        "IXMtest_G06_s7_w19444140C-EF22-42DE-863A-514D836BE850",
        "IXMtest_G08_s6_w1823194BE-DE9A-4638-BACD-CABE5FA4C89C",
        "IXMtest_G23_s4_w126F855D5-89CE-432B-9592-684B6E5EEF24",
        "IXMtest_H11_s6_w19DF4E879-8DE4-45D6-840B-305BDDB27076",
        "IXMtest_I04_s9_w16A5CC270-8B92-42EE-AA4A-855776F7D46B",
        "IXMtest_I11_s6_w1B2DC04C7-2D7D-45C6-9DC2-66D8605FBE63",
        "IXMtest_I15_s8_w196F01FA4-CE06-44AE-AAA5-ADEC35BAE513",
        "IXMtest_I17_s7_w1BB3D534E-DF08-4F21-BAC6-6B105BB40AF9",
        "IXMtest_J02_s8_w1D9C198F9-ECF0-4EF7-848D-AC7782CD3C28",
        "IXMtest_J11_s2_w1177A125B-DEBE-4CB7-8F26-53A871785BA5",
        "IXMtest_J17_s1_w19E7BCD2F-6D7E-4B39-9154-F93E4D539183",
        "IXMtest_K12_s1_w193D6C057-1AA9-4E2F-86EA-2E71961BE68B",
        "IXMtest_K17_s5_w1BB3AD9D7-3A85-458C-AB1C-07A816C2C203",
        "IXMtest_L10_s6_w12D12D64C-2639-4CA8-9BB4-99F92C9B7068",
        "IXMtest_L11_s4_w13C057BB5-9CFB-471F-84B5-72F80654CF81",
        "IXMtest_N15_s8_w16DBEFA45-FE5A-4233-A1B9-89CA8CF81FB8",
        "IXMtest_N21_s1_w14F264B20-62D6-47EC-9BCD-B9416AB302D9",
        "IXMtest_N23_s2_w16380EDDA-E5B8-4168-8BE7-F83AD9810680",
        "IXMtest_O16_s3_w129E61E12-E398-496E-9408-092D2D70E74B",
        "IXMtest_P01_s3_w1A7DC2612-9C11-4656-B100-102AF8FE8B43",
        "IXMtest_P23_s9_w1CA355675-EEC7-40B6-82C8-DC7E52A7A825",
    ),
    "bbbc010": (  # 50 images -> 40 train / 10 val
        "A04",
        "A20",
        "A24",
        "B07",
        "B16",
        "C17",
        "C19",
        "C23",
        "D16",
        "D17",
    ),
    "dsb2018": (  # 173 images -> 138 train / 35 val
        "091944f1d2611c916b98c020bd066667e33f4639159b2a92407fe5a40788856d",
        "0b2e702f90aee4fff2bc6e4326308d50cf04701082e718d4f831c8959fbcda93",
        "16c3d5935ba94b720becc24b7a05741c26149e221e3401924080f41e2f891368",
        "24a20f2a529cede5695df2422a3986505b5826bb10b10781d6db2074cf3de7b3",
        "295ac4ecf2ee0211c065cf5dbb93b1eb8e61347153447209cd110e9c3e355e81",
        "30f65741053db713b3f328d31d3234b6fedbe31df65c1a8ea29be28146cab789",
        "3934a094e8537841e973342c7f8880606f7a2712b14930340d6f6c2afe178c25",
        "3ebd2ab34ba86e515feb79ffdeb7fc303a074a98ba39949b905dbde3ff4b7ec0",
        "40b00d701695d8ea5d59f95ac39e18004040c96d17fbc1a539317c674eca084b",
        "4193474b2f1c72f735b13633b219d9cabdd43c21d9c2bb4dfc4809f104ba4c06",
        "4217e25defac94ff465157d53f5a24b8a14045b763d8606ec4a97d71d99ee381",
        "4948e3dfe0483c2198b9616612071ead5474dffd223071cf0a567aea9aca0b9e",
        "4d4ebfcae4374165ea6ae7c7e18fd0ba5014c3c860ee2489c59e25ddd45e7a32",
        "4e92129f4e8066d6f560d6022cd343a2245939aa49d8b06cddbd9bfc7e7eeb0e",
        "514ccfc78cb55988a238d3ac9dc83460aa88382c95d56bcc0559962d9fe481ef",
        "5b12df18e4ae4df5af06052584cf0e6bef58ee2a220653890636eef88a944e14",
        "5d21acedb3015c1208b31778561f8b1079cca7487399300390c3947f691e3974",
        "670ebd9d674be236b9bf0b28650ad3f68e1891b06e16a9021fd069ca7ef32b78",
        "6fb82031f7fc5f4fa6e0bc2ef3421db19036b5c2cdd2725009ab465d66d61d72",
        "76a372bfd3fad3ea30cb163b560e52607a8281f5b042484c3a0fc6d0aa5a7450",
        "76faaed50ed6ea6814ac36199964b86fb09ba7f41a6f213bceaa80d625adc2e1",
        "7773ac91af61ed041701b7c3b649598e3707cf04c0577f464fd31be687f538fe",
        "7c0157913223365720209ac83ff2e0b1b2b460173acd615c67646014093a2b97",
        "93c5638e7e6433b5c9cc87c152bcbe28873d2f9d6a392cca0642520807542a77",
        "9facc652efe19f634639585d692a53dd6c2a8e2f0c9baebdfd85b9b41ec58851",
        "af6b6173c59450bc76b2cc461cf233921fbfdb6feb8dd6da03a0d44193221fd0",
        "b98681c74842c4058bd2f88b06063731c26a90da083b1ef348e0ec734c58752b",
        "c901794d1a421d52e5734500c0a2a8ca84651fb93b19cec2f411855e70cae339",
        "cbff60361ded0570e5d50429a1aa51d81471819bc9b38359f03cfef76de0038c",
        "d2ce593bddf9998ce3b76328c0151d0ba4b644c293aca7f6254e521c448b305f",
        "d7ec8003735996458b56ccb8ae34d080eb2a6adabef931323239632515b4b220",
        "e2d22d3d283915df8350d039278e314a23e6e8f2b41bdfc16df849e22dd13b36",
        "e5aeb5b3577abbebe8982b5dd7d22c4257250ad3000661a42f38bf9248d291fd",
        "ec486143ecfec847c22cd8cbc207d85312bcf38e61c9b9a805e0d12add62da8d",
        "ef6634efb46567d87b811be786b18c4cd0e2cda23d79b65d6afe0d259ef3ade6",
    ),
}
"""Validation item names per data set (sorted); every other item of the data set is training."""


def make_split(
    names: Sequence[str], val_fraction: float = VAL_FRACTION, seed: int = SEED
) -> tuple[list[str], list[str]]:
    """(train names, val names), both sorted: sort, seeded permutation, first
    ``round(val_fraction * n)`` names of the permutation are validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise ValueError("names must be unique")
    n_val = int(round(len(ordered) * val_fraction))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    val = sorted(ordered[i] for i in perm[:n_val])
    chosen = set(val)
    return [n for n in ordered if n not in chosen], val


def val_ids(dataset: str) -> tuple[str, ...]:
    """Recorded validation names of ``dataset`` ("bbbc039", "bbbc010" or "dsb2018")."""
    key = str(dataset).lower()
    if key not in VAL_IDS:
        raise ValueError(f"no recorded split for data set {dataset!r}; known: {sorted(VAL_IDS)}")
    return VAL_IDS[key]


class SubsetView(Sequence):
    """A lazy view of some items of a reader (``view[i]`` loads ``reader[indices[i]]``)."""

    def __init__(self, reader, indices: Sequence[int]) -> None:
        self.reader, self.indices = reader, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.reader[self.indices[i]]

    @property
    def names(self) -> list[str]:
        return [self.reader.items[i].name for i in self.indices]


def split_indices(reader, dataset: str, *, strict: bool = True) -> tuple[list[int], list[int]]:
    """(train indices, val indices) of ``reader`` (a :class:`~instembed.data.readers.Reader`)
    under the recorded split of ``dataset``.

    Items whose name is a recorded validation id go to validation, all others to training.
    ``strict``: raise ``ValueError`` when a recorded validation id is missing from the reader
    (a different copy of the data); otherwise the split uses the ids present.
    """
    wanted = set(val_ids(dataset))
    names = [item.name for item in reader.items]
    missing = wanted - set(names)
    if missing and strict:
        raise ValueError(
            f"{getattr(reader, 'root', reader)}: {len(missing)} of the {len(wanted)} recorded "
            f"{dataset} validation ids are not in this data set (e.g. {sorted(missing)[0]!r}); "
            "is it another copy of the data? pass strict=False to split what is there"
        )
    val = [i for i, n in enumerate(names) if n in wanted]
    train = [i for i, n in enumerate(names) if n not in wanted]
    return train, val


def split_dataset(reader, dataset: str, *, strict: bool = True) -> tuple[SubsetView, SubsetView]:
    """(train view, val view) of ``reader`` under the recorded split of ``dataset``."""
    train, val = split_indices(reader, dataset, strict=strict)
    return SubsetView(reader, train), SubsetView(reader, val)
