"""Training: one process of a run with its phases in order (`trainer.Run.train()`), its checkpoints and
their two-phase best commit (`checkpoint`), and the epoch's loss summed on the device (`running_loss`).
"""
