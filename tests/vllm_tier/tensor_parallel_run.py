"""Run by test_vllm_parallel.py in its own process: the demo in a vLLM engine with two tensor-parallel
worker processes, recording and editing; prints one JSON line of the arrays to compare."""

import json
import sys


def main() -> None:
    import workbench as wb
    from engine_checks import TEXTS

    spec = wb.Mask({1: [0, 1, 2, 3]})
    with wb.load("demo", backend="vllm", max_model_len=512, tensor_parallel_size=int(sys.argv[1])) as vm:
        plain = wb.record(vm, TEXTS, progress=False)
        with wb.edit(vm, spec):
            edited = wb.record(vm, TEXTS, progress=False)
            generated = [g.token_ids for g in vm.generate(["Once upon a time"], 6, ignore_eos=True)]
        installed = vm.llm.collective_rpc("wb_installed")
    print("RESULT " + json.dumps({"plain_idx": plain.topk_idx.tolist(), "plain_w": plain.topk_w.tolist(),
                                  "edited_idx": edited.topk_idx.tolist(), "generated": generated,
                                  "installed": installed}), flush=True)


if __name__ == "__main__":  # vLLM starts worker processes: the engine is made under the main guard
    main()
