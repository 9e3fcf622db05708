

def test_interleaved_blocks_rotate_the_order_and_time_every_call():
    from rfdeploy.runtime.bench import interleaved_blocks, round_ratio

    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": lambda: calls.append("c")}
    times = interleaved_blocks(fns, rounds=3, block=4, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}  # one block median per round
    assert len(calls) == 3 * 3 * (4 + 1)
    firsts = [calls[i * 15] for i in range(3)]  # the configuration opening each round
    assert firsts == ["a", "b", "c"]
    assert all(len(set(calls[i:i + 5])) == 1 for i in range(0, len(calls), 5))  # blocks are back-to-back
    assert round_ratio([2.0, 6.0, 3.0], [1.0, 2.0, 3.0]) == 2.0  # median of 2, 3, 1
