import torch

from slimasr.decode import DecodeConfig, GreedyDecoder, greedy_decode, ids_to_text, make_decoder


def one_hot_log_probs(paths: list[list[int]], vocab: int, length: int) -> torch.Tensor:
    """(N, length, vocab) log-probs whose argmax follows each path (padded with token vocab-1)."""
    out = torch.full((len(paths), length, vocab), -5.0)
    for n, path in enumerate(paths):
        for t in range(length):
            out[n, t, path[t] if t < len(path) else vocab - 1] = -0.1
    return out


def test_greedy_merges_repeats_drops_blanks_and_respects_lengths():
    paths = [[1, 1, 0, 1, 2, 2, 0, 0, 3], [0, 0, 0], [2, 0, 2, 2, 1]]
    log_probs = one_hot_log_probs(paths, vocab=5, length=9)  # padding frames hold token 4
    lens = torch.tensor([9, 3, 5])
    assert greedy_decode(log_probs, lens) == [[1, 1, 2, 3], [], [2, 2, 1]]


def test_greedy_handles_empty_batch_and_zero_lengths():
    assert greedy_decode(torch.zeros(0, 4, 3), torch.zeros(0, dtype=torch.long)) == []
    log_probs = one_hot_log_probs([[1, 2]], vocab=3, length=2)
    assert greedy_decode(log_probs, torch.tensor([0])) == [[]]


def test_ids_to_text_characters_and_pieces():
    chars = ["<blk>", " ", "a", "b"]
    assert ids_to_text([1, 2, 3, 1, 1, 3, 1], chars) == "ab b"
    pieces = ["<blk>", "<unk>", "▁ab", "c", "▁", "d"]
    assert ids_to_text([2, 3, 4, 5, 2], pieces, word_sep="▁") == "abc d ab"
    wav2vec = ["<blk>", "|", "a"]
    assert ids_to_text([2, 1, 2], wav2vec, word_sep="|") == "a a"


def test_greedy_decoder_texts():
    tokens = ["<blk>", " ", "h", "i"]
    log_probs = one_hot_log_probs([[2, 2, 3, 1, 0, 3, 3]], vocab=4, length=7)
    decoder = make_decoder(tokens, DecodeConfig(method="greedy"))
    assert isinstance(decoder, GreedyDecoder)
    assert decoder.decode_batch(log_probs, torch.tensor([7])) == ["hi i"]
