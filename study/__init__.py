"""symstudy: ablation studies of parameter symmetries and mode connectivity."""
