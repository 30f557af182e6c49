-- Optuna's studies live in their own database beside MLflow's: both use Alembic, whose
-- version tables would collide in one database.
CREATE DATABASE optuna;
