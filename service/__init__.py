"""The REST service: FastAPI app serving latent_cnf models (see service/app.py). Its core (inference, batching,
cost, scores, uploads, failures, v2_models) and the bodies it reads and writes (schemas, open_inference) know no
HTTP; app, routes, dependencies and errors translate."""
