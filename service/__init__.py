"""The REST service: FastAPI app serving latent_cnf models (see service/app.py)."""
