"""The REST service: FastAPI app serving latent_cnf models (see service/app.py). Its core (inference, batching,
cost, scores, uploads, failures) knows no HTTP; app, routes, errors, schemas and the v2 protocol translate."""
