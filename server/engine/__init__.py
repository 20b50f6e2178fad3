"""The engine: a model stepped by the scheduler's plans, in this process or its own.

    core.py, llm.py   EngineCore (schedule, execute, update) and the in-process LLM
    service/          the engine as processes: loop, client, messages, tensor-parallel workers
    step/             one step: inputs, runner, sampler, decode CUDA graphs
    loading/          checkpoints, GGUF, dummy shapes, engine directories, `inflightd build`
    gpu/              NVRTC, kernels and their arguments, tuning, the choice of ops
    parallel/         tensor parallelism: the shard plan, collectives, cutting weights
    models/, ops/, attention/   the model families, and the math they call
"""
