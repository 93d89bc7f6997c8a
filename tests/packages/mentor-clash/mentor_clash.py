"""Registers a loss called 'kd', which mentor's built-ins already register."""

from mentor import Loss, hookimpl


class OtherKD(Loss):
    def forward(self, out):
        return out.student_logits.sum() * 0


@hookimpl
def register_losses(register):
    register("kd", OtherKD)
