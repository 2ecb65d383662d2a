"""The last layer computed only where it is read: the same embeddings and gradients as the whole layer."""

import copy

import pytest
import torch

from salsa_lib.core import encoders
from salsa_lib.core.encoders import TextEncoder, build_passt, transformer_layers
from salsa_lib.core.readout import ReadoutBlock, first_token_of_layer, read_only_class_tokens


def _gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _assert_same_gradients(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys() and reference
    scale = max(g.abs().max() for g in reference.values())
    for name, grad in reference.items():  # relative to the largest: a key bias's gradient is 0 up to rounding
        assert torch.allclose(ours[name], grad, atol=1e-5 * scale, rtol=1e-4), name


@pytest.fixture(scope="module")
def passt_pair():
    torch.manual_seed(0)
    whole = build_passt("passt_small", 1.0, width=48, depth=2, heads=3)
    return whole, read_only_class_tokens(copy.deepcopy(whole))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_passt_readout_gives_the_class_tokens_and_gradients_of_the_whole_block(passt_pair, mode):
    whole, readout = passt_pair
    assert isinstance(readout.blocks[-1], ReadoutBlock) and not isinstance(whole.blocks[-1], ReadoutBlock)
    assert list(readout.state_dict()) == list(whole.state_dict())  # every checkpoint loads unchanged
    mel = torch.randn(4, 1, 128, 100)
    outputs = {}
    for name, model in (("whole", whole), ("readout", readout)):
        getattr(model, mode)()
        model.zero_grad()
        torch.manual_seed(1)  # the same patchout in training
        cls, dist = model.forward_features(mel)
        (cls.square().sum() + (cls * dist).sum()).backward()
        outputs[name] = (cls.detach(), dist.detach(), _gradients(model))
    for ours, reference in zip(outputs["readout"][:2], outputs["whole"][:2]):
        assert torch.allclose(ours, reference, atol=1e-5)
    _assert_same_gradients(outputs["readout"][2], outputs["whole"][2])


def test_the_readout_block_returns_the_read_tokens_only(passt_pair):
    _, readout = passt_pair
    tokens = torch.randn(3, 20, 48)
    assert readout.blocks[-1].eval()(tokens).shape == (3, 2, 48)
    assert read_only_class_tokens(readout).blocks[-1] is readout.blocks[-1]  # applied once


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(encoders.PACKAGED_MINILM, trainable_layers=2).eval()


def test_text_readout_gives_the_first_token_and_gradients_of_the_whole_layer(minilm):
    captions = ["a dog barks", "a loud siren wails slowly at first while rain falls in the background", "wind"]
    states = minilm.frozen_states(captions)  # three lengths: the padding mask matters
    hidden = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
    mask = (torch.arange(hidden.shape[1])[None, :] < torch.tensor([len(s) for s in states])[:, None]).long()
    layers = transformer_layers(minilm.model)[minilm.n_frozen:]
    results = {}
    for first_only in (False, True):
        minilm.zero_grad()
        first = minilm._run_layers(hidden, mask, layers, first_token_only=first_only)
        assert first.shape[1] == (1 if first_only else hidden.shape[1])
        first[:, 0].square().sum().backward()
        results[first_only] = (first[:, 0].detach(), _gradients(minilm))
    assert torch.allclose(results[True][0], results[False][0], atol=1e-5)
    _assert_same_gradients(results[True][1], results[False][1])
    with torch.no_grad():  # what training calls: the same first token as transformers' own forward
        assert torch.allclose(minilm.forward_from_states(states), minilm(captions), atol=1e-5)


def test_text_readout_keeps_the_attention_dropout_in_training(minilm):
    layer = copy.deepcopy(transformer_layers(minilm.model)[-1])
    layer.attention.output.dropout.p = layer.output.dropout.p = 0.0  # only the attention dropout left
    hidden = torch.randn(2, 6, minilm.dim)
    with torch.no_grad():
        layer.eval()
        assert torch.equal(first_token_of_layer(layer, hidden, None), first_token_of_layer(layer, hidden, None))
        layer.train()
        dropped = [first_token_of_layer(layer, hidden, None) for _ in range(2)]
        layer.eval()
    assert layer.attention.self.dropout.p == pytest.approx(0.2)
    assert not torch.equal(*dropped)


def test_a_quantised_projection_is_called_whole_and_gives_the_same_class_tokens(passt_pair):
    whole, readout = passt_pair
    quantised = [torch.ao.quantization.quantize_dynamic(copy.deepcopy(m).eval(), {torch.nn.Linear}, dtype=torch.qint8)
                 for m in (whole, readout)]
    assert not isinstance(quantised[1].blocks[-1].attn.qkv, torch.nn.Linear)  # the branch without weights to split
    mel = torch.randn(2, 1, 128, 100)
    with torch.no_grad():
        reference, ours = (torch.cat(m.forward_features(mel)) for m in quantised)
    # int8 activations are scaled per call: the read tokens alone get other scales, hence the tolerance
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=0.05 * float(reference.abs().max()))
