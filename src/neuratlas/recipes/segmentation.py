"""U-Net recipes on real medical images: fluorescence nuclei (StarDist / DSB 2018) and brain MRI (Colin27).

``unet-nuclei-quick`` and ``unet-brain-quick`` are the tour's segmentation rows (1–3 CPU minutes each); the
others train longer.
"""

from neuratlas.recipes.registry import register_recipe


def _run(model: str, data: dict, steps: int, lr: float = 3e-3, **model_args) -> dict:
    return {
        "model": {"name": model, **model_args},
        "data": data,
        "task": {"name": "segmentation"},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1e-4},
        "schedule": {"name": "onecycle", "pct_start": 0.15},
        "trainer": {"max_steps": steps, "eval_every": max(steps // 4, 1), "log_every": 10},
    }


NUCLEI = {"name": "stardist-nuclei", "crop_size": 128, "batch_size": 8}
BRAIN = {"name": "colin27-lobes", "batch_size": 8, "context": 2}  # 2.5-D: ±2 neighbouring slices as channels

register_recipe(
    "unet-nuclei-quick",
    _run("unet-resnet18-slim", NUCLEI, 150),
    "U-Net (half-width ResNet-18 encoder) on DSB nuclei: 3 quadrants train, 1 test; 150 steps",
    family="unet",
    tour=True,
    target="test-quadrant Dice ≥ 0.85",
)
register_recipe(
    "unet-nuclei",
    _run("unet-resnet18-slim", {**NUCLEI, "boundary": True}, 1200),
    "U-Net with an interior/boundary target that separates touching nuclei, 1,200 steps",
    family="unet",
    target="test-quadrant foreground Dice ≥ 0.88, instance F1 ≥ 0.8",
)
# 300 steps: at 150 the held-out Dice was 0.24 (val 0.36), at 250 0.48 (val 0.66), at 300 0.58 / 0.63 for
# seeds 0 / 1 (val 0.72 / 0.75), ~80 s on 2 cores (docs/detection_segmentation.md, 2026-12-02)
register_recipe(
    "unet-brain-quick",
    _run("unet-resnet18-slim", BRAIN, 300),
    "U-Net on Colin27 T1 axial slices (±2 neighbouring slices as channels), AAL merged into 7 regions; 300 steps",
    family="unet-brain",
    tour=True,
    target="held-out-slice mean Dice ≥ 0.5",
)
register_recipe(
    "unet-brain",
    _run("unet-resnet18-slim", BRAIN, 400),
    "U-Net on Colin27 T1 axial slices (with ±2 neighbouring slices as channels), 7 regions, "
    "400 steps (longer overfits the 82 training slices)",
    family="unet-brain",
    target="held-out-slice mean Dice ≥ 0.7",
)
