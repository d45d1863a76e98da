from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnvis_cli.techniques.eigen import EigenCAM


def test_first_principal_component_of_the_layer_signed_towards_its_activity(tiny_net) -> None:
    torch.manual_seed(3)
    images = torch.randn(2, 3, 12, 12)
    maps = EigenCAM(tiny_net, ["features"]).explain(images, torch.tensor([0, 0, 1]), torch.tensor([0, 3, 1])).maps
    torch.testing.assert_close(maps[0], maps[1])  # class-agnostic: every target the same map
    with torch.no_grad():
        activations = tiny_net.features(images)
    for row, image in ((0, 0), (2, 1)):
        matrix = activations[image].flatten(1).T.double()  # positions x channels
        centred = matrix - matrix.mean(dim=0)
        _, _, vh = torch.linalg.svd(centred)
        projection = centred @ vh[0]
        activity = matrix.sum(dim=1)
        if torch.dot(projection, activity - activity.mean()) < 0:
            projection = -projection
        cam = F.interpolate(F.relu(projection).view(1, 1, 6, 6).float(), size=(12, 12), mode="bilinear",
                            align_corners=False)[0, 0]
        expected = (cam - cam.min()) / (cam.max() - cam.min())
        torch.testing.assert_close(maps[row], expected, atol=1e-4, rtol=1e-3)
