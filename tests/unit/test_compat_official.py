"""Official iFSQ configs (``ifsq_quant.compat.official``): what ``iFSQ.from_official_config`` refuses."""

import pytest


@pytest.mark.parametrize("config,exc,match", [
    ({"levels": "17"}, TypeError, "official config's 'levels'"),
    ({"levels": 17}, TypeError, "official config's 'levels'"),
    ({"levels": None}, TypeError, "official config's 'levels'"),
    ({"levels": [17] * 4, "factorized_bits": 2}, TypeError, "official config's 'factorized_bits'"),
    ({"levels": [17] * 4, "factorized_bits": "22"}, TypeError, "official config's 'factorized_bits'"),
    ({"levels": [17] * 4, "factorized_bits": [2.0, 2.0]}, TypeError, "official config's 'factorized_bits'"),
    ({"levels": [17] * 4, "factorized_bits": [1, 2]}, ValueError, r"'factorized_bits' must add up to len\(levels\) = 4"),
    ({"levels": [17] * 4, "do_simple_bound": "yes"}, TypeError, "'do_simple_bound' must be a bool"),
    ({"levels": [17] * 4, "do_simple_bound": True, "act_fun": "sigmoid"}, ValueError, "official config's 'act_fun'"),
])
def test_official_config_errors_name_the_key(config, exc, match):
    from ifsq_quant import iFSQ

    with pytest.raises(exc, match=match):
        iFSQ.from_official_config(config)
