"""What a user does with hepray, end to end: run a job, predict with a trained model.

The app layer starts or joins Ray, wires the lower packages together (data -> train ->
evaluate) and writes a run's outputs. Nothing below it imports it (README: Layout).
"""
