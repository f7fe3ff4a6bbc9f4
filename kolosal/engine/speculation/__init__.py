"""Speculative decoding without a draft model: the drafter and what the drafting decision
measures (``drafting``), and the policy object the scheduler calls (``policy``). Imported
by submodule: ``request`` needs the drafter's type and the policy needs ``request``."""
