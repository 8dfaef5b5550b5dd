"""The model a command names, with its weights settled and nothing built: shared by
`run` and `bench`, which take the same model options."""

from __future__ import annotations


def settle_model(
    model: str,
    weights: str | None,
    weights_dir: str | None,
    weights_url: str | None,
    seed: int,
    factory_args: list[str],
    name: str | None,
    **preprocessing: object,
):
    """The LoadedModel of the command line's options (``preprocessing``: resize, crop,
    interpolation, mean, std as given), before torch is imported: a wrong name, factory
    argument or preprocessing value, or weights that cannot be had, fail here."""
    from aabench.models.custom import preprocessing_overrides
    from aabench.models.zoo import create_model

    given = {
        "resize_size": preprocessing.get("resize"),
        "crop_size": preprocessing.get("crop"),
        "interpolation": preprocessing.get("interpolation"),
        "mean": preprocessing.get("mean"),
        "std": preprocessing.get("std"),
    }
    return create_model(
        model,
        weights=weights,
        weights_dir_path=weights_dir,
        init_seed=seed,
        weights_url=weights_url,
        build=False,
        preprocessing=preprocessing_overrides(given, cli=True),
        factory_args=factory_args,
        display_name=name,
    )
