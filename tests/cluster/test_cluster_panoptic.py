"""Panoptic fusion: majority vote, numbering, stuff area, void."""

import torch

from instembed.cluster import panoptic_fusion


def test_panoptic_fusion_by_hand():
    # classes: 0 road (stuff), 1 sky (stuff), 11 person (thing), 13 car (thing)
    sem = torch.zeros(4, 6, dtype=torch.long)
    sem[0, :] = 1  # 6 sky pixels
    sem[1:, 0:2] = 11
    sem[1:, 2:4] = 13
    sem[3, 3] = 11  # one person pixel inside the car instance
    inst = torch.zeros(4, 6, dtype=torch.long)
    inst[1:, 0:2] = 1  # 6 pixels, all person
    inst[1:, 2:4] = 2  # 6 pixels: 5 car, 1 person -> car
    inst[1, 4] = 3  # a lone instance on road: no thing pixel -> dropped (void)
    pan, cls = panoptic_fusion(sem, inst, [11, 13], stuff_area=5, label_divisor=1000)
    assert cls.tolist() == [11, 13, -1]
    assert (pan[1:, 0:2] == 11001).all()
    assert (pan[1:, 2:4] == 13001).all()
    assert (pan[0] == 1000).all()  # sky: 6 >= 5 pixels
    # road: (rows 1-3, cols 4-5) = 6 pixels minus the dropped instance pixel (1, 4): the dropped
    # instance leaves its pixel free, so road has 6 pixels -> 0 * 1000 = 0
    assert (pan[1:, 4:] == 0).all()
    pan, _ = panoptic_fusion(sem, inst, [11, 13], stuff_area=7, void_label=-1)
    assert (pan[0] == -1).all() and (pan[1:, 4:] == -1).all()  # both stuff areas below 7


def test_instances_numbered_per_class():
    sem = torch.tensor([[11, 11, 13, 13, 11, 11]])
    inst = torch.tensor([[1, 1, 2, 2, 3, 3]])
    pan, _ = panoptic_fusion(sem, inst, [11, 13], stuff_area=1, label_divisor=256)
    assert pan.tolist() == [[11 * 256 + 1] * 2 + [13 * 256 + 1] * 2 + [11 * 256 + 2] * 2]
