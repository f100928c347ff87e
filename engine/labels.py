"""The 14 NIH ChestX-ray14 labels, in the order every model output and table uses."""

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"


def n_defined(aucs: dict) -> int:
    """How many labels a mean AUROC averages: those with an AUROC (a label with no positives or no
    negatives in the split has none)."""
    return sum(v is not None for v in aucs.values())


NUM_CLASSES = len(LABELS)

# CheXNet (Rajpurkar et al. 2017, arXiv:1711.05225, Table 1): published per-class test AUROC on
# ChestX-ray14 - the reference column of `chexui compare`
CHEXNET_AUROC: dict[str, float] = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Effusion": 0.8638,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pneumonia": 0.7680,
    "Pneumothorax": 0.8887,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062,
    "Hernia": 0.9164,
}
