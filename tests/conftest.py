"""Hypothesis profiles: `default` for CI; `mutation` (HYPOTHESIS_PROFILE=mutation) skips shrinking, to
check quickly that a deliberately broken engine makes the property tests fail."""

import os

from hypothesis import Phase, settings

settings.register_profile("default", settings.get_profile("default"))
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
