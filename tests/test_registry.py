"""The registry's champion: each evaluated generator a version (once per way of scoring it),
the alias only ever moving to a lower FID scored the same way."""

import keras
import mlflow

from dcgan import tracking


def test_champion_alias_moves_only_to_a_lower_fid_scored_the_same_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the store's artifacts: ./mlartifacts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    generator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.Reshape((2, 2, 1))])
    with mlflow.start_run() as run:
        tracking.log_generator(generator, latent_dim=4, epoch_number=1)
    scored_on = {"data": "mnist", "test_split": "0f" * 32, "features": "classifier", "num_samples": "100"}
    moved = [
        tracking.register_generator(run.info.run_id, fid, {**scored_on, **other})
        for fid, other in (
            (50.0, {}),
            (60.0, {}),
            (40.0, {}),
            (10.0, {"features": "inception"}),
            (45.0, {"num_samples": "200"}),
            (40.0, {}),
        )
    ]
    assert moved == [True, False, True, False, False, False]  # worse, or scored otherwise: the alias stays
    # The last, an evaluation rerun (same generator, same scoring, same FID), added no version.
    assert len(mlflow.MlflowClient().search_model_versions("name = 'dcgan-mnist'")) == 5
    champion = mlflow.MlflowClient().get_model_version_by_alias("dcgan-mnist", tracking.CHAMPION)
    assert int(champion.version) == 3 and champion.tags["fid"] == "40.0" and champion.tags["run_id"] == run.info.run_id
    model = mlflow.pyfunc.load_model(f"models:/dcgan-mnist@{tracking.CHAMPION}")
    assert model.predict(keras.random.normal((3, 4)).numpy()).shape == (3, 2, 2, 1)
