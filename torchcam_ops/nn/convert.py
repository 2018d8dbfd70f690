"""TSGB and guided backprop for a user's own code: context managers that apply the explainers' backward
rules (:mod:`torchcam_ops.nn.rules`, the one rule table) to every forward pass run in the block, in the
calling thread, without touching the model; and the one way the classifier is found."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from torchcam_ops.nn.rules import guided_rules, tsgb_rules


def find_classifier(
    model: nn.Module, classifier: str | nn.Module | None = None, *, argument: str = "classifier"
) -> tuple[str, nn.Linear] | None:
    """The classifier layer: the given module or dotted name, else the last ``nn.Linear`` in the
    model's module order (``model.fc``, ``model.classifier[6]``, ``model.head``...), else None.

    Args:
        model: the model to search.
        classifier: the classifier, an ``nn.Linear`` module of ``model`` or its dotted name; None
            (default) for the last ``nn.Linear``.
        argument: the argument's name in error messages (``"classifier"``, CAM's ``"fc"``).

    Returns:
        ``(dotted name, module)`` of the classifier, or None when ``classifier`` is None and the model
        has no ``nn.Linear``.

    Raises:
        ValueError: the model has no submodule of the given name, the given module is not part of the
            model, or the classifier is not an ``nn.Linear``.
    """
    if isinstance(classifier, str):
        try:
            module = model.get_submodule(classifier)
        except AttributeError:
            raise ValueError(f"{argument}: the model has no submodule {classifier!r}") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"{argument}: expected an nn.Linear classifier, got {type(module).__name__} ({classifier!r})"
            )
        return classifier, module
    if isinstance(classifier, nn.Module):
        for name, module in model.named_modules():
            if module is classifier:
                if not isinstance(module, nn.Linear):
                    raise ValueError(f"{argument}: expected an nn.Linear classifier, got {type(module).__name__}")
                return name, module
        raise ValueError(f"{argument}: the module is not part of the model")
    if classifier is not None:
        raise TypeError(f"{argument}: expected a module name, an nn.Linear or None, got {type(classifier).__name__}")
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@contextlib.contextmanager
def tsgb(model: nn.Module, classifier: str | nn.Module | None = None, beta: float = 1.0) -> Iterator[nn.Module]:
    """The TSGB rules of :class:`torchcam_ops.methods.TSGB` for every forward pass run in the block, in
    the calling thread: ``with tsgb(model): logits = model(x); logits[:, c].sum().backward()`` gives
    ``x.grad`` whose product with ``x`` is TSGB's relevance. The rules are those of
    :func:`torchcam_ops.nn.rules.tsgb_rules`: every Conv2d takes TSGB-Conv, the classifier TSGB-FC,
    batch norms with running statistics, average pools (floor mode, padding counted), activations and
    other normalisations conserve relevance. The model is not changed (no module is swapped), so other
    threads running it meanwhile keep the ordinary gradients; the backward pass must run inside the block
    when activation checkpointing recomputes layers there.

    Args:
        model: the model whose layers take the rules (nothing of it is changed).
        classifier: the classifier that takes TSGB-FC, an ``nn.Linear`` module of ``model`` or its dotted
            name; None (default) for the last ``nn.Linear`` (:func:`find_classifier`).
        beta: TSGB-FC's beta, the weight of the negative part (default 1.0; see
            :func:`torchcam_ops.ops.tsgb_linear`).

    Returns:
        A context manager; ``as`` gives ``model``.

    Raises:
        ValueError: on entering the block: the classifier is not found or not an ``nn.Linear``, ``beta`` is
            not a real number, or no rule would apply (no Conv2d and no classifier).
        RuntimeError: in the block, a batch norm with running statistics runs in training mode.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta == beta:
        raise ValueError(f"beta: expected a real number, got {beta!r}")
    found = find_classifier(model, classifier)
    with tsgb_rules(model, found[1] if found else None, float(beta)):
        yield model


@contextlib.contextmanager
def guided(model: nn.Module, mode: str = "guided") -> Iterator[nn.Module]:
    """Every ReLU (``nn.ReLU`` modules and functional ``F.relu``/``torch.relu`` calls, in-place ones
    included) with the ``guided`` or ``deconvnet`` backward for every forward pass run in the block, in
    the calling thread (:func:`torchcam_ops.nn.rules.guided_rules`, as
    :class:`torchcam_ops.methods.GuidedBackprop` uses). The model is not changed.

    Args:
        model: the model (nothing of it is changed; the rule applies to every ReLU run in the block).
        mode: the backward rule, ``"guided"`` (default) or ``"deconvnet"``; ``"plain"`` (the ordinary
            ReLU gradient) is accepted too.

    Returns:
        A context manager; ``as`` gives ``model``.

    Raises:
        ValueError: ``mode`` is not one of ``torchcam_ops.ops.RELU_MODES``.
    """
    with guided_rules(mode):
        yield model
