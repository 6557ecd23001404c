"""metrics/: faithfulness of explanation maps, every perturbed image scored by the explainer's own batched scorer."""

from .confidence import average_drop, increase_in_confidence
from .perturbation_curves import deletion_auc, deletion_curve, insertion_auc, insertion_curve
from .road import ROAD_PERCENTILES, RoadScores, road_scores

__all__ = ["average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve",
           "road_scores", "RoadScores", "ROAD_PERCENTILES"]
