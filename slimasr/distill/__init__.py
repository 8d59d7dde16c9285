"""Knowledge distillation: a teacher's knowledge into a smaller student.

    from slimasr.distill import distill_model
    distill_model("recipes/distill_crnn.yaml", "data/smarthome", "exp/student",
                  overrides=["teacher.path=exp/teacher", "loss.kd_weight=0.5"])

Losses are pure functions in ``slimasr.distill.losses``; teachers (slimasr or Hugging Face) and
the teacher cache in ``slimasr.distill.teacher``; student creation in ``slimasr.distill.student``.
"""

from slimasr.distill.config import DistillRecipe, LossConfig, StudentConfig, TeacherConfig, load_distill_recipe
from slimasr.distill.run import distill_model

__all__ = ["DistillRecipe", "LossConfig", "StudentConfig", "TeacherConfig", "distill_model",
           "load_distill_recipe"]
