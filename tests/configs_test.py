"""The config schema: one dataclass per section holds every default and check."""

import dataclasses

import pytest

from fusion_jax import configs, errors, schema
from fusion_jax.models import heads, registry


@pytest.mark.parametrize("preset", sorted(configs.PRESETS))
def test_every_preset_has_exactly_the_schema_keys_and_validates(preset):
  c = configs.PRESETS[preset]()
  configs.validate(c)
  for name, cls in configs.SECTIONS.items():
    assert set(c[name]) == {f.name for f in dataclasses.fields(cls)}, name


def test_defaults_come_from_the_schema_alone():
  c = configs.default()
  for name, cls in configs.SECTIONS.items():
    assert dict(c[name]) == dataclasses.asdict(cls()), name


def _bad(value):
  return "-5" if isinstance(value, str) else -5


CHECKED = [(name, f) for name, cls in configs.SECTIONS.items() for f in dataclasses.fields(cls)
           if f.metadata.get("check") is not None and f.default is not None]


@pytest.mark.parametrize("section,field", [(n, f.name) for n, f in CHECKED])
def test_a_value_that_fails_its_check_is_one_line_naming_the_field(section, field):
  cls = configs.SECTIONS[section]
  values = dataclasses.asdict(cls())
  values[field] = _bad(values[field])
  with pytest.raises(errors.ConfigError) as e:
    schema.check(cls, values, section)
  assert str(e.value) == (f"config.{section}.{field} = {values[field]!r} must be "
                          f"{dict((f.name, f) for f in dataclasses.fields(cls))[field].metadata['want']} "
                          f"(--config.{section}.{field})")
  assert isinstance(e.value, errors.UserError) and isinstance(e.value, ValueError)


def test_each_head_knob_is_declared_once_and_read_by_its_head():
  model_fields = {f.name for f in dataclasses.fields(configs.ModelConfig)}
  assert set(heads.HEAD_KNOBS) <= model_fields
  readers = {}
  for v in registry.names():
    head = registry.get(v).head
    for k in (head.knob_names() if head else ()):
      readers.setdefault(k, set()).add(v)
  assert set(readers) == set(heads.HEAD_KNOBS)   # no knob without a head that reads it
  built = registry.get("low_rank").head.from_config(
      dataclasses.replace(configs.ModelConfig(), tensor_dim=7, rank=3), 4)
  assert (built.tensor_dim, built.rank) == (7, 3)


def test_a_saved_config_without_a_newer_field_reads_the_schema_default():
  assert configs.selection_metric({"train": {"epochs": 3}}) == "accuracy"
  assert configs.selection_metric({"train": {"selection_metric": "uar", "gone": 1}}) == "uar"
