"""The script a user would write instead of cnnvis, for benchmarks/end_to_end.py: predict every image of a
folder, then draw a Grad-CAM overlay of the predicted class for each with pytorch-grad-cam, batched.

    python benchmarks/peer_gradcam.py IMAGE_FOLDER OUTPUT_FOLDER

Random-initialised resnet18 (seed 0), torchvision's ImageNet preprocessing (resize 256, centre crop 224),
32 images a batch; writes predictions.csv and one PNG overlay per image, as cnnvis's run does.
"""

import csv
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision import transforms

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None).eval()
geometry = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
to_input = transforms.Compose([transforms.ToTensor(),
                               transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
paths = sorted(folder.rglob("*.jpg"))
cam = GradCAM(model=model, target_layers=[model.layer4])
with (out / "predictions.csv").open("w", newline="") as file:
    writer = csv.writer(file)
    writer.writerow(["path", "predicted", "confidence"])
    for start in range(0, len(paths), 32):
        batch = paths[start:start + 32]
        crops = [geometry(Image.open(path).convert("RGB")) for path in batch]
        inputs = torch.stack([to_input(crop) for crop in crops])
        with torch.no_grad():
            confidence, predicted = model(inputs).softmax(dim=1).max(dim=1)
        maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in predicted])
        for path, crop, heat, label, score in zip(batch, crops, maps, predicted, confidence, strict=True):
            overlay = show_cam_on_image(np.asarray(crop, dtype=np.float32) / 255, heat, use_rgb=True)
            cv2.imwrite(str(out / f"{path.stem}.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            writer.writerow([path, int(label), float(score)])
