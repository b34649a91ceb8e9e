"""The Python API: `import mlm` is cheap and exposes the commands as functions."""

import pytest

from tests.conftest import run_python


@pytest.mark.slow
def test_import_mlm_loads_no_tensorflow_and_exposes_the_api():
    program = (
        "import sys, mlm\n"
        "names = ['load_recipe', 'apply_overrides', 'pretrain', 'continue_pretraining',\n"
        "         'evaluate_preset', 'fill_mask', 'load_masked_lm', 'export_checkpoint',\n"
        "         'train_vocabulary', 'MlmError']\n"
        "print('tensorflow' in sys.modules, all(n in dir(mlm) for n in names))\n"
        "print(callable(mlm.pretrain), callable(mlm.continue_pretraining))\n"
        # Importing every submodule must not shadow a function of the same name.
        "import pkgutil, importlib\n"
        "for m in pkgutil.iter_modules(mlm.__path__):\n"
        "    m.name != '__main__' and importlib.import_module('mlm.' + m.name)\n"
        "print(all(callable(getattr(mlm, n)) for n in names))\n"
    )
    assert run_python(program).split() == ["False", "True", "True", "True", "True"]


def test_unknown_attribute_is_an_attribute_error():
    import mlm

    try:
        mlm.does_not_exist  # noqa: B018
    except AttributeError as e:
        assert "does_not_exist" in str(e)
    else:
        raise AssertionError("expected AttributeError")


@pytest.mark.slow
def test_api_functions_stay_functions_after_their_modules_are_imported():
    # The run story lives in `mlm.pretraining`, not `mlm.pretrain`: a submodule
    # named like an API function would replace it on the package once imported.
    program = (
        "import types, mlm\n"
        "first = mlm.pretrain\n"
        "from mlm.pretraining import finish_run\n"
        "import mlm.run.report\n"
        "print(first is mlm.pretrain, isinstance(mlm.pretrain, types.FunctionType))\n"
        "print(mlm.run.report.write_report is mlm.write_report)\n"
    )
    assert run_python(program).split() == ["True", "True", "True"]
