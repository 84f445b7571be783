# MLflow tracking server with the Postgres driver.
FROM ghcr.io/mlflow/mlflow:v3.1.1
RUN pip install --no-cache-dir psycopg2-binary
