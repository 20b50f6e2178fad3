"""One engine step: inputs from the scheduler's plan, the runner, sampling and what feeds the next step."""
