"""Shared fixture: the main behavioural quantizer tests run both jitted and op by op."""

import jax
import pytest


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request):
  """jax.jit, or the function unchanged (jit keyword arguments ignored).

  Eager runs see concrete values (the id range checks run, Python branches on values work);
  jitted runs trace, so both paths of every main test are covered.
  """
  if request.param:
    return jax.jit
  return lambda fn, **unused_jit_kwargs: fn
