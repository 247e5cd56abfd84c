"""Analysis of finished studies: MLflow runs to pandas tables and plots."""
