"""Any segmentation_models.pytorch architecture, with the box path for the ancillary net.

An smp model is an encoder (features at strides 1, 2, 4, ... 32), a decoder that reads some of
those features, and a head. The ancillary net p_anc(y|x,b) is the same model with the paper's
box encoder (box_encoder.py) multiplying an attention map into every encoder feature the
decoder reads ("after the encoder, on several scales"), and, with `BoxPathSpec.direct`, the
box tensor concatenated to the head's input so a box can create evidence for its class.

Which features a decoder reads is found once, at build time, by asking autograd which of
them the decoder's output depends on (a 256x256 probe in eval mode): no table of architectures
to keep, and no box-encoder weight that DDP would find unused.

smp models need sides divisible by their encoder's stride (and some encoders need them even
where smp does not check); images of any size are padded with zeros (the normalised mean) at
the bottom and right to a multiple of the encoder's stride, and the logits cropped back.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from boxseg.errors import BoxsegError
from boxseg.io import load_torch
from boxseg.models.box_encoder import BoxEncoder, BoxPathSpec, resize_boxes

MIN_FILLED = 0.95  # a weights file must fill nearly all of the encoder's tensors
PROBE = 256  # side of the build-time probe that finds the features a decoder reads


def smp_module():
    """segmentation_models_pytorch, or a one-line error saying how to install it."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:  # a dependency; only a broken install lacks it
        raise BoxsegError(
            "--arch needs segmentation-models-pytorch: pip install segmentation-models-pytorch"
        ) from e
    return smp


def smp_archs() -> list[str]:
    """The architecture names of smp that boxseg runs (deeplabv3plus, unet, fpn, segformer,
    upernet ...; not dpt)."""
    return sorted(set(smp_module().MODEL_ARCHITECTURES_MAPPING) - {"dpt"})


def refuse_unsupported(arch: str, training_processes: int) -> None:
    """One line for an architecture boxseg cannot run: dpt (its ViT encoder asserts on any
    input size but its own; boxseg pads to any size), and pspnet trained by several processes
    (`PSPNET_UNDER_DDP`)."""
    if arch == "dpt":
        raise BoxsegError(
            "--arch dpt: needs a fixed input size (that of its ViT encoder) and is not "
            "supported; choose another --arch"
        )
    if arch == "pspnet" and training_processes > 1:
        raise BoxsegError(PSPNET_UNDER_DDP)


def arch_options(arch: str, output_stride: int, decoder_channels: int) -> dict:
    """The smp constructor options boxseg's ModelSpec sets for `arch`: the DeepLab family's
    output stride and width (smp's defaults elsewhere; 256 is smp's own default width)."""
    if arch in ("deeplabv3plus", "deeplabv3"):
        return {"encoder_output_stride": output_stride, "decoder_channels": decoder_channels}
    return {}


def create_smp(arch: str, encoder: str, num_classes: int, output_stride: int, channels: int):
    """smp's model, untrained, with boxseg's one-line errors for unknown names and for the
    architecture boxseg cannot run (dpt; pspnet under DDP: `SmpNet.ddp_refusal`)."""
    smp = smp_module()
    if arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise BoxsegError(
            f"--arch {arch}: unknown (choose boxseg or one of {', '.join(smp_archs())})"
        )
    refuse_unsupported(arch, training_processes=1)
    try:
        model = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None,
            classes=num_classes,
            **arch_options(arch, output_stride, channels),
        )
    except (KeyError, ValueError, RuntimeError) as e:
        msg = str(e.args[0] if e.args else e).splitlines()[0]
        if msg.startswith("Wrong encoder name"):  # smp lists a hundred names: point to them
            msg = "not an smp encoder (smp's encoder list, or tu-NAME for a timm model)"
        raise BoxsegError(f"--arch {arch} --encoder {encoder}: {msg}") from e
    model.decoder.boxseg_name = f"--arch {arch} --encoder {encoder}"  # for features_read
    return model


def features_read(encoder: nn.Module, decoder: nn.Module) -> list[int]:
    """Indices of the encoder features the decoder's output depends on (autograd decides).
    An architecture that fails on the probe is one line naming it (`create_smp`'s tag)."""
    modes = encoder.training, decoder.training
    encoder.eval(), decoder.eval()
    try:
        feats = [f.detach().requires_grad_() for f in encoder(torch.zeros(1, 3, PROBE, PROBE))]
        out = decoder(feats)
        grads = torch.autograd.grad(out.sum(), feats, allow_unused=True)
    except (RuntimeError, AssertionError) as e:  # smp's size limits: the user's choice of net
        why = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        name = getattr(decoder, "boxseg_name", None) or (
            f"{type(decoder).__name__} on {type(encoder).__name__}"
        )
        raise BoxsegError(f"{name}: fails on a {PROBE}x{PROBE} image ({why})") from e
    finally:
        encoder.train(modes[0]), decoder.train(modes[1])
    return [
        i
        for i, (g, f) in enumerate(zip(grads, feats, strict=True))
        if g is not None and f.shape[1] > 0
    ]


PSPNET_UNDER_DDP = (
    "--arch pspnet: not supported under torchrun: it reads only the first encoder stages, and "
    "DistributedDataParallel refuses the later ones left without gradients; train it in one "
    "process or choose another --arch"
)


class SmpNet(nn.Module):
    """An smp model as boxseg's network: forward(image, boxes=None) -> logits at the input's
    size. With `box_channels` it is the ancillary net and needs the box tensor."""

    def __init__(
        self,
        arch: str,
        encoder: str,
        num_classes: int,
        box_channels: int | None = None,
        output_stride: int = 16,
        decoder_channels: int = 256,
        pretrained: str = "none",
        box_path: BoxPathSpec | None = None,
    ):
        super().__init__()
        net = create_smp(arch, encoder, num_classes, output_stride, decoder_channels)
        self.pretrained = load_encoder_weights(net, arch, encoder, pretrained)
        self.encoder, self.decoder = net.encoder, net.decoder
        self.segmentation_head = net.segmentation_head  # smp's name: smp state dicts load
        self.ddp_refusal = PSPNET_UNDER_DDP if arch == "pspnet" else ""  # engine.fit reads it
        self.stride = net.encoder.output_stride  # also where smp does not ask: timm's
        # ConvNeXt downsamples with unpadded convs, and a side under 32 would vanish
        self.box_encoder, self.box_direct, self.box_read = None, False, []
        if box_channels:
            box_path = box_path or BoxPathSpec()
            self.box_read = features_read(self.encoder, self.decoder)
            channels = [self.encoder.out_channels[i] for i in self.box_read]
            self.box_encoder = BoxEncoder(box_channels, channels, box_path.resize)
            self.box_direct = box_path.direct
            if self.box_direct:  # the head also reads the box tensor
                old = self.segmentation_head[0]
                self.segmentation_head[0] = nn.Conv2d(
                    old.in_channels + box_channels,
                    old.out_channels,
                    old.kernel_size,
                    padding=old.padding,
                )

    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at the input's resolution (N x K x H x W)."""
        if self.box_encoder is not None and boxes is None:
            raise ValueError("the ancillary model needs the box tensor")
        h, w = image.shape[-2:]
        pad = (0, -w % self.stride, 0, -h % self.stride)  # no branch: one graph for export
        image = F.pad(image, pad)
        boxes = None if boxes is None else F.pad(boxes, pad)
        feats = list(self.encoder(image))
        if self.box_encoder is not None:
            maps = self.box_encoder(boxes, [feats[i].shape[-2:] for i in self.box_read])
            for i, a in zip(self.box_read, maps, strict=True):
                feats[i] = feats[i] * a
        x = self.decoder(feats)
        if self.box_direct:
            x = torch.cat([x, resize_boxes(boxes.to(x.dtype), x.shape[-2:], "max")], dim=1)
        logits = self.segmentation_head(x)
        if logits.shape[-2:] != image.shape[-2:]:  # heads that stop short of full resolution
            logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear")
        return logits[..., :h, :w]


def load_encoder_weights(net: nn.Module, arch: str, encoder: str, pretrained: str) -> dict | None:
    """Fill the encoder with `pretrained` weights: none, a local state dict file (an encoder's,
    or a whole smp model's), or one of the encoder's weight names in smp (imagenet, ssl ...),
    fetched the smp way. Returns what was loaded (source, tensors filled), or None."""
    if pretrained == "none":
        return None
    own = net.encoder.state_dict()
    if Path(pretrained).is_file():
        return _load_file(net.encoder, encoder, pretrained)
    if _looks_like_path(pretrained):  # a typo in a path, not a weights name to look up
        what = "not a file" if Path(pretrained).exists() else "file not found"
        raise BoxsegError(f"{pretrained}: {what}")
    if encoder.startswith("tu-") and pretrained != "imagenet":  # smp: any name means timm's own
        raise BoxsegError(
            f"--pretrained {pretrained}: a tu- encoder takes imagenet (timm's default weights "
            "of the model) or a state dict file"
        )
    try:  # smp downloads into torch's hub cache (timm encoders: the Hugging Face cache)
        ref = smp_module().create_model(
            arch, encoder_name=encoder, encoder_weights=pretrained, classes=1
        )
    except (KeyError, ValueError) as e:
        msg = str(e.args[0] if e.args else e).splitlines()[0]
        raise BoxsegError(f"--pretrained {pretrained}: {msg}") from e
    except Exception as e:  # noqa: BLE001 - no network, a cut download: the user's to fix
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise BoxsegError(
            f"--pretrained {pretrained}: cannot get the {encoder} weights ({why}); put a state "
            "dict file on this machine and pass its path as --pretrained"
        ) from e
    net.encoder.load_state_dict(ref.encoder.state_dict())
    return {
        "source": f"smp {encoder} {pretrained}",
        "tensors_filled": len(own),
        "tensors": len(own),
    }


def _looks_like_path(value: str) -> bool:
    """A --pretrained value that names a file (a folder in it, or a weights file's suffix)."""
    suffixes = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    return "/" in value or os.sep in value or value.lower().endswith(suffixes)


def _read_state(path: str) -> object:
    """A weights file's contents: safetensors by its suffix, else torch's (one-line errors)."""
    if not path.lower().endswith(".safetensors"):
        return load_torch(Path(path), "state dict")
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise BoxsegError(f"{path}: reading .safetensors needs: pip install safetensors") from e
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # noqa: BLE001 - a torn or foreign file is the user's to fix
        why = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise BoxsegError(f"{path}: unreadable safetensors file ({why[:80]})") from e


def _timm_name(key: str, own: dict) -> str:
    """A timm model's state dict key as smp's TimmUniversalEncoder names it: under `model.`,
    and with a top-level Sequential's child flattened (timm's features_only net: stages.0 ->
    stages_0)."""
    flat = "model." + key.replace(".", "_", 1)
    return flat if "model." + key not in own and flat in own else "model." + key


def _load_file(encoder_net: nn.Module, encoder: str, path: str) -> dict:
    """A local state dict into the encoder, refused unless it fills nearly all its tensors.
    The file may hold the encoder's own keys, a whole smp model's (encoder.*) or a timm
    model's (a tu- encoder's model.*): the reading that fills the most tensors is kept."""
    state = _read_state(path)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BoxsegError(f"{path}: not a state dict of tensors")
    own = encoder_net.state_dict()
    readings = [state]
    if any(k.startswith("encoder.") for k in state):  # a whole smp model's state dict
        readings.append(
            {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        )
    readings += [{_timm_name(k, own): v for k, v in r.items()} for r in readings]

    def fits(reading: dict) -> dict:
        return {k: v for k, v in reading.items() if k in own and own[k].shape == v.shape}

    state = max(readings, key=lambda r: len(fits(r)))  # the first of equals: the file's keys
    usable = fits(state)
    if len(usable) < MIN_FILLED * len(own) or len(usable) < MIN_FILLED * len(state):
        unused = len(state) - len(usable)
        left = f" ({unused} of the file's {len(state)} left unused)" if unused else ""
        raise BoxsegError(
            f"{path}: fills {len(usable)} of the {len(own)} tensors of the {encoder} "
            f"encoder{left}: another encoder's weights?"
        )
    encoder_net.load_state_dict(usable, strict=False)
    return {"source": str(path), "tensors_filled": len(usable), "tensors": len(own)}
