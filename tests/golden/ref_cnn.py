"""PyTorch definitions mirroring s2h's CNNs (models/cnn_small, resnet, mobilenet, vgg).

Parameter and buffer names equal s2h's state_dict names, so a state dict maps
1:1 (convert conv weights to [out][kh][kw][in] and images to NHWC). Layouts
here are PyTorch's (NCHW); where s2h flattens an NHWC feature map, these
modules permute to NHWC first so that the linear layer's columns agree.
s2h's ChannelMask modules are nn.Identity here (Mask), at the same places.

MODELS maps a model key to (builder(num_classes) -> nn.Module, input spec
"CxHxW"[, extras]). A key "name@size" is model `name` at another input; the
extras dict holds "classes" (default 10) and ModelConfig fields to set
("imagenet_stem"). Used by make_model_golden.py. torchvision is not needed.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

Mask = nn.Identity


def conv(i, o, k, stride=1, groups=1, bias=False):
    """Conv with "same" padding, Kaiming-normal (fan_out) as torchvision; bias 0."""
    c = nn.Conv2d(i, o, k, stride, (k - 1) // 2, groups=groups, bias=bias)
    nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
    if bias:
        nn.init.zeros_(c.bias)
    return c


def linear_small_init(i, o):
    """torchvision's classifier initialisation for VGG and MobileNets: N(0, 0.01), bias 0."""
    lin = nn.Linear(i, o)
    nn.init.normal_(lin.weight, 0, 0.01)
    nn.init.zeros_(lin.bias)
    return lin


class FlattenNHWC(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


def global_pool(x):
    return x.mean((2, 3))


# ---------------------------------------------------------------- cnn-small
def cnn_small(classes, size=28, in_ch=1):
    """models/cnn_small.cpp: masks at Sequential indices 3, 8, 13 (so the names are 0,1,5,6,10,11,15)."""
    def cbr(i, o):
        return [conv(i, o, 3), nn.BatchNorm2d(o), nn.ReLU(), Mask()]
    s = size // 4
    return nn.Sequential(*cbr(in_ch, 32), nn.MaxPool2d(2), *cbr(32, 64), nn.MaxPool2d(2), *cbr(64, 64),
                         FlattenNHWC(), nn.Linear(64 * s * s, classes))


# ---------------------------------------------------------------- ResNets
class BasicBlock(nn.Module):
    def __init__(self, i, o, stride):
        super().__init__()
        self.conv1, self.bn1, self.mask1 = conv(i, o, 3, stride), nn.BatchNorm2d(o), Mask()
        self.conv2, self.bn2, self.mask2 = conv(o, o, 3), nn.BatchNorm2d(o), Mask()
        self.downsample = (nn.Sequential(conv(i, o, 1, stride), nn.BatchNorm2d(o), Mask())
                           if stride != 1 or i != o else None)

    def forward(self, x):
        h = self.mask1(F.relu(self.bn1(self.conv1(x))))
        h = self.mask2(self.bn2(self.conv2(h)))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, i, planes, stride):
        super().__init__()
        o = planes * 4
        self.conv1, self.bn1, self.mask1 = conv(i, planes, 1), nn.BatchNorm2d(planes), Mask()
        self.conv2, self.bn2, self.mask2 = conv(planes, planes, 3, stride), nn.BatchNorm2d(planes), Mask()
        self.conv3, self.bn3, self.mask3 = conv(planes, o, 1), nn.BatchNorm2d(o), Mask()
        self.downsample = (nn.Sequential(conv(i, o, 1, stride), nn.BatchNorm2d(o), Mask())
                           if stride != 1 or i != o else None)

    def forward(self, x):
        h = self.mask1(F.relu(self.bn1(self.conv1(x))))
        h = self.mask2(F.relu(self.bn2(self.conv2(h))))
        h = self.mask3(self.bn3(self.conv3(h)))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


RESNETS = {  # bottleneck, blocks per layer, widths, stem width
    "resnet20": (False, [3, 3, 3], [16, 32, 64], 16),
    "resnet56": (False, [9, 9, 9], [16, 32, 64], 16),
    "resnet18": (False, [2, 2, 2, 2], [64, 128, 256, 512], 64),
    "resnet50": (True, [3, 4, 6, 3], [64, 128, 256, 512], 64),
}


class ResNet(nn.Module):
    def __init__(self, name, classes, imagenet_stem=False, in_ch=3):
        super().__init__()
        bottleneck, blocks, widths, stem = RESNETS[name]
        self.conv1 = conv(in_ch, stem, 7, 2) if imagenet_stem else conv(in_ch, stem, 3)
        self.bn1, self.mask1 = nn.BatchNorm2d(stem), Mask()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet_stem else None
        i = stem
        for li, (n, w) in enumerate(zip(blocks, widths)):
            layer = []
            for j in range(n):
                stride = 2 if j == 0 and li > 0 else 1
                layer.append(Bottleneck(i, w, stride) if bottleneck else BasicBlock(i, w, stride))
                i = w * 4 if bottleneck else w
            setattr(self, f"layer{li + 1}", nn.Sequential(*layer))
        self.layers = len(blocks)
        self.fc = nn.Linear(i, classes)

    def forward(self, x):
        h = self.mask1(F.relu(self.bn1(self.conv1(x))))
        if self.maxpool is not None:
            h = self.maxpool(h)
        for li in range(self.layers):
            h = getattr(self, f"layer{li + 1}")(h)
        return self.fc(global_pool(h))


class WideBlock(nn.Module):
    def __init__(self, i, o, stride):
        super().__init__()
        self.bn1, self.in_mask = nn.BatchNorm2d(i), Mask()
        self.conv1, self.bn2, self.mask1 = conv(i, o, 3, stride), nn.BatchNorm2d(o), Mask()
        self.conv2, self.mask2 = conv(o, o, 3), Mask()
        self.shortcut = conv(i, o, 1, stride) if stride != 1 or i != o else None
        self.shortcut_mask = Mask() if self.shortcut is not None else None

    def forward(self, x):
        h = self.in_mask(F.relu(self.bn1(x)))
        o = self.mask1(F.relu(self.bn2(self.conv1(h))))
        o = self.mask2(self.conv2(o))
        return o + (self.shortcut_mask(self.shortcut(h)) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    def __init__(self, classes, depth=28, widen=10, in_ch=3):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = conv(in_ch, 16, 3)
        i = 16
        for li in range(3):
            o = (16 << li) * widen
            layer = []
            for j in range(n):
                layer.append(WideBlock(i, o, 2 if j == 0 and li > 0 else 1))
                i = o
            setattr(self, f"layer{li + 1}", nn.Sequential(*layer))
        self.bn, self.mask = nn.BatchNorm2d(i), Mask()
        self.fc = nn.Linear(i, classes)

    def forward(self, x):
        h = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(global_pool(self.mask(F.relu(self.bn(h)))))


# ---------------------------------------------------------------- MobileNets
def make_divisible(v, divisor=8):
    r = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return r + divisor if r < 0.9 * v else r


def conv_norm_act(i, o, k, stride, groups, act, bn, mask):
    """torchvision's Conv2dNormActivation (conv 0, BN 1, act 2) with s2h's mask appended."""
    layers = [conv(i, o, k, stride, groups), bn(o)]
    if act is not None:
        layers.append(act())
    if mask:
        layers.append(Mask())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, ch, squeeze):
        super().__init__()
        self.fc1, self.fc2 = conv(ch, squeeze, 1, bias=True), conv(squeeze, ch, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, seq_name, layers, residual):
        super().__init__()
        self.seq_name, self.residual = seq_name, residual
        setattr(self, seq_name, nn.Sequential(*layers))

    def forward(self, x):
        h = getattr(self, self.seq_name)(x)
        return x + h if self.residual else h


RE, HS = nn.ReLU, nn.Hardswish
V3_LARGE = [(16, 3, 16, 16, False, RE, 1), (16, 3, 64, 24, False, RE, 2), (24, 3, 72, 24, False, RE, 1),
            (24, 5, 72, 40, True, RE, 2), (40, 5, 120, 40, True, RE, 1), (40, 5, 120, 40, True, RE, 1),
            (40, 3, 240, 80, False, HS, 2), (80, 3, 200, 80, False, HS, 1), (80, 3, 184, 80, False, HS, 1),
            (80, 3, 184, 80, False, HS, 1), (80, 3, 480, 112, True, HS, 1), (112, 3, 672, 112, True, HS, 1),
            (112, 5, 672, 160, True, HS, 2), (160, 5, 960, 160, True, HS, 1), (160, 5, 960, 160, True, HS, 1)]
V3_SMALL = [(16, 3, 16, 16, True, RE, 2), (16, 3, 72, 24, False, RE, 2), (24, 3, 88, 24, False, RE, 1),
            (24, 5, 96, 40, True, HS, 2), (40, 5, 240, 40, True, HS, 1), (40, 5, 240, 40, True, HS, 1),
            (40, 5, 120, 48, True, HS, 1), (48, 5, 144, 48, True, HS, 1), (48, 5, 288, 96, True, HS, 2),
            (96, 5, 576, 96, True, HS, 1), (96, 5, 576, 96, True, HS, 1)]


def v2_blocks(small_input):
    settings = [(1, 16, 1, 1), (6, 24, 2, 1 if small_input else 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
    blocks, i = [], 32
    for t, c, n, s in settings:
        for j in range(n):
            blocks.append((i, 3, i * t, c, False, nn.ReLU6, s if j == 0 else 1))
            i = c
    return blocks


class MobileNet(nn.Module):
    """mobilenetv2 / mobilenetv3-large / mobilenetv3-small as models/mobilenet.cpp."""

    def __init__(self, name, classes, image_size=32, in_ch=3):
        super().__init__()
        v2 = name == "mobilenetv2"
        small_input = image_size <= 64
        blocks = v2_blocks(small_input) if v2 else (V3_LARGE if name == "mobilenetv3-large" else V3_SMALL)
        if v2:
            def bn(c):
                return nn.BatchNorm2d(c)
        else:
            def bn(c):
                return nn.BatchNorm2d(c, eps=0.001, momentum=0.01)
        stem_act = nn.ReLU6 if v2 else nn.Hardswish
        seq_name = "conv" if v2 else "block"
        first_residual = blocks[0][6] == 1 and blocks[0][0] == blocks[0][3]
        features = [conv_norm_act(in_ch, blocks[0][0], 3, 1 if small_input else 2, 1, stem_act, bn, first_residual)]
        for (i, k, e, o, se, act, s) in blocks:
            layers = []
            if e != i:
                layers.append(conv_norm_act(i, e, 1, 1, 1, act, bn, False))
            layers.append(conv_norm_act(e, e, k, s, e, act, bn, True))
            if se:
                layers.append(SqueezeExcitation(e, make_divisible(e // 4)))
            if v2:
                layers += [conv(e, o, 1), bn(o), Mask()]
            else:
                layers.append(conv_norm_act(e, o, 1, 1, 1, None, bn, True))
            features.append(InvertedResidual(seq_name, layers, s == 1 and i == o))
        last_in = blocks[-1][3]
        last = 1280 if v2 else 6 * last_in
        features.append(conv_norm_act(last_in, last, 1, 1, 1, stem_act, bn, True))
        self.features = nn.Sequential(*features)
        if v2:
            self.classifier = nn.Sequential(nn.Dropout(0.2), linear_small_init(last, classes))
        else:
            hidden = 1280 if name == "mobilenetv3-large" else 1024
            self.classifier = nn.Sequential(linear_small_init(last, hidden), nn.Hardswish(), nn.Dropout(0.2),
                                            linear_small_init(hidden, classes))

    def forward(self, x):
        return self.classifier(global_pool(self.features(x)))


# ---------------------------------------------------------------- VGG
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """vgg16-bn as models/vgg.cpp: masks in their own list, NHWC flatten before the classifier."""

    def __init__(self, classes, image_size=32, in_ch=3):
        super().__init__()
        features, masks, self.mask_after = [], [], []
        i = in_ch
        for v in VGG16:
            if v == "M":
                features.append(nn.MaxPool2d(2))
                self.mask_after.append(None)
                continue
            c = conv(i, v, 3, bias=True)
            features += [c, nn.BatchNorm2d(v), nn.ReLU()]
            self.mask_after += [None, None, len(masks)]
            masks.append(Mask())
            i = v
        self.features, self.masks = nn.Sequential(*features), nn.Sequential(*masks)
        if image_size <= 64:
            f = image_size // 32
            self.avgpool = None
            self.classifier = linear_small_init(i * f * f, classes)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(7)
            self.classifier = nn.Sequential(linear_small_init(i * 49, 4096), nn.ReLU(), nn.Dropout(0.5),
                                            linear_small_init(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
                                            linear_small_init(4096, classes))

    def forward(self, x):
        for layer, m in zip(self.features, self.mask_after):
            x = layer(x)
            if m is not None:
                x = self.masks[m](x)
        if self.avgpool is not None:
            x = self.avgpool(x)
        return self.classifier(x.permute(0, 2, 3, 1).flatten(1))


# ---------------------------------------------------------------- the table
MODELS = {
    "cnn-small": (lambda c: cnn_small(c), "1x28x28"),
    "resnet20": (lambda c: ResNet("resnet20", c), "3x32x32"),
    "resnet56": (lambda c: ResNet("resnet56", c), "3x32x32"),
    "resnet18": (lambda c: ResNet("resnet18", c), "3x32x32"),
    "resnet50": (lambda c: ResNet("resnet50", c), "3x32x32"),
    "wrn28-10": (lambda c: WideResNet(c), "3x32x32"),
    "mobilenetv2": (lambda c: MobileNet("mobilenetv2", c, 32), "3x32x32"),
    "mobilenetv3-large": (lambda c: MobileNet("mobilenetv3-large", c, 32), "3x32x32"),
    "mobilenetv3-small": (lambda c: MobileNet("mobilenetv3-small", c, 32), "3x32x32"),
    "vgg16-bn": (lambda c: VGG(c, 32), "3x32x32"),
    # Tiny ImageNet
    "resnet18@64": (lambda c: ResNet("resnet18", c), "3x64x64", {"classes": 200}),
    "resnet50@64": (lambda c: ResNet("resnet50", c), "3x64x64", {"classes": 200}),
    "vgg16-bn@64": (lambda c: VGG(c, 64), "3x64x64", {"classes": 200}),
    # ImageNet sizes: the large-input stems, strides and classifiers
    "resnet18@224": (lambda c: ResNet("resnet18", c, imagenet_stem=True), "3x224x224",
                     {"classes": 1000, "imagenet_stem": True}),
    "mobilenetv2@224": (lambda c: MobileNet("mobilenetv2", c, 224), "3x224x224", {"classes": 1000}),
    "mobilenetv3-large@224": (lambda c: MobileNet("mobilenetv3-large", c, 224), "3x224x224", {"classes": 1000}),
    "mobilenetv3-small@224": (lambda c: MobileNet("mobilenetv3-small", c, 224), "3x224x224", {"classes": 1000}),
}

# torchvision's parameter counts (1000 classes, 224x224) that the large-input
# variants above must reproduce; make_model_golden.py checks them.
TORCHVISION_PARAMS = {
    "resnet18@224": 11689512,
    "mobilenetv2@224": 3504872,
    "mobilenetv3-large@224": 5483032,
    "mobilenetv3-small@224": 2542856,
}
