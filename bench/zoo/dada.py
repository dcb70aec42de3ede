"""DADA's published augmentation policies (Li et al. 2020, "DADA: Differentiable Automatic
Data Augmentation", ECCV 2020, arXiv:2003.03780), beside torchvision's AutoAugment.

:data:`POLICIES` holds the four policies the authors published, verbatim from their
repository: VDIGPKU/DADA, ``fast-autoaugment/FastAutoAugment/genotype.py`` (commit
7e113677c30dbf71430a963c2ac9d6b2aed7148b), the lists ``CIFAR10``, ``CIFAR100``, ``SVHN`` and
``ImageNet``, each searched on its reduced dataset (the names in that file give the search
setting, e.g. ``..._reduced_cifar10_wresnet40_2_...``). A policy is 25 sub-policies of two
operations ``(name, probability, level)`` with the level in [0, 1].

How a policy is applied is the authors' training code (``FastAutoAugment/data.py``,
``Augmentation``; ``FastAutoAugment/augmentations.py``, taken from Fast AutoAugment), per
image: one sub-policy drawn uniformly; each of its operations applied, in order, with its
probability; an operation's value is ``level · (high − low) + low`` over its range below
(level clipped to [0, 1]); shears, translations and rotations are negated with probability
1/2. So, for those, level 0.5 is no change and the sign is random:

    ShearX/ShearY [−0.3, 0.3] (PIL affine (1, v, 0, 0, 1, 0) / (1, 0, 0, v, 1, 0))
    TranslateX/TranslateY [−0.45, 0.45] × the image width/height, in pixels
    Rotate [−30, 30] degrees        Solarize [0, 256] threshold      Posterize [4, 8] bits (int)
    Contrast, Color, Brightness, Sharpness [0.1, 1.9] enhancement factor (1: unchanged)
    Cutout [0, 0.2] × the width: a square of that side filled with (125, 123, 114)
    AutoContrast, Invert, Equalize: no magnitude

The operations are torchvision's (``transforms.v2.functional``, the functions its AutoAugment
uses to emulate PIL: ``affine`` with the shear about the origin, ``rotate``,
``adjust_saturation`` for Color, ...) on 8-bit images, as the authors' PIL pipeline works in 8
bits: the image, in [0, 1] (see :class:`bench.zoo.augment.PerImagePolicy`, which maps each
channel by the training images' range and runs this image by image on the CPU under the
trial's seeded stream), is rounded to 0…255 when an operation applies, and mapped back.
Geometric operations sample the nearest pixel and fill uncovered areas with 0, as PIL's
``transform`` and ``rotate`` do. Two details follow the authors' code rather than intent:
Cutout's centre is drawn as ``np.random.uniform(w)``, which is U(1, w) (numpy reads the
single argument as the low end, with high 1), and its square is PIL's ``rectangle`` with
inclusive corners; a one-channel image is filled with 123, PIL's luma of the fill colour.
Colour operations leave one-channel images unchanged.

The paper's CIFAR and SVHN training adds random crop and flip before the policy and Cutout
(16 px on CIFAR, 20 on SVHN) after it; here ``augment`` is one choice, so a study combines
``dada`` with nothing else, as ``autoaugment`` is.
"""

from __future__ import annotations

import math

import torch

from bench.errors import ConfigError
from bench.zoo.augment import Augment, AugmentContext, LabelPreserving, PerImagePolicy
from bench.zoo.registry import AUGMENTS, Option

DADA_POLICY_NAMES = ("cifar10", "cifar100", "svhn", "imagenet")

# name -> 25 sub-policies of ((operation, probability, level), (operation, probability, level)).
POLICIES: dict[str, tuple[tuple[tuple[str, float, float], ...], ...]] = {
    "cifar10": (
        (('TranslateX', 0.5183464288711548, 0.5752825736999512), ('Rotate', 0.5693835616111755, 0.5274667739868164)),
        (('ShearX', 0.5028448104858398, 0.4595153331756592), ('Sharpness', 0.5036740303039551, 0.5378073453903198)),
        (('Brightness', 0.5574088096618652, 0.5563607811927795), ('Sharpness', 0.5241265296936035, 0.4670485556125641)),
        (('ShearY', 0.6167989373207092, 0.4837495684623718), ('Brightness', 0.4740375578403473, 0.4566589295864105)),
        (('ShearX', 0.4406820833683014, 0.5844581723213196), ('TranslateY', 0.3973384499549866, 0.5110136270523071)),
        (('Rotate', 0.39651215076446533, 0.517960250377655), ('Equalize', 0.3761792480945587, 0.36424142122268677)),
        (('AutoContrast', 0.4399465024471283, 0.48347008228302), ('Cutout', 0.49450358748435974, 0.5)),
        (('AutoContrast', 0.5601025819778442, 0.479571133852005), ('Color', 0.44876909255981445, 0.6113184690475464)),
        (('Rotate', 0.4231756627559662, 0.6356207132339478), ('AutoContrast', 0.59876549243927, 0.5785224437713623)),
        (('Invert', 0.39854735136032104, 0.5), ('Color', 0.4968028664588928, 0.4379926025867462)),
        (('Posterize', 0.5603401064872742, 0.49880319833755493), ('Brightness', 0.5293631553649902, 0.47918644547462463)),
        (('TranslateY', 0.4231869578361511, 0.5149744749069214), ('AutoContrast', 0.3750160336494446, 0.5654526352882385)),
        (('ShearX', 0.3773101270198822, 0.5), ('Contrast', 0.485131174325943, 0.5186365842819214)),
        (('ShearY', 0.5420096516609192, 0.6018360257148743), ('Rotate', 0.30701273679733276, 0.5576906800270081)),
        (('Posterize', 0.4173527657985687, 0.4971156716346741), ('Color', 0.450246661901474, 0.5576846599578857)),
        (('TranslateX', 0.4143139123916626, 0.450955331325531), ('TranslateY', 0.3599278926849365, 0.4812163710594177)),
        (('TranslateX', 0.574902355670929, 0.5), ('Brightness', 0.5378687381744385, 0.4751467704772949)),
        (('TranslateX', 0.5295567512512207, 0.5137100219726562), ('Cutout', 0.6851200461387634, 0.4909016489982605)),
        (('ShearX', 0.4579184353351593, 0.44350510835647583), ('Invert', 0.41791805624961853, 0.3984798192977905)),
        (('Rotate', 0.49958375096321106, 0.4244190752506256), ('Contrast', 0.49455592036247253, 0.4244190752506256)),
        (('Rotate', 0.42886781692504883, 0.46792319416999817), ('Solarize', 0.49862080812454224, 0.41575634479522705)),
        (('TranslateY', 0.7362872958183289, 0.5113809704780579), ('Color', 0.3918609917163849, 0.5744326114654541)),
        (('Equalize', 0.42245715856552124, 0.5293998718261719), ('Sharpness', 0.39708659052848816, 0.43052399158477783)),
        (('Solarize', 0.7260022759437561, 0.42120808362960815), ('Cutout', 0.5075806379318237, 0.46120622754096985)),
        (('ShearX', 0.5757555961608887, 0.563892662525177), ('TranslateX', 0.4761257469654083, 0.49035176634788513)),
    ),
    "cifar100": (
        (('ShearY', 0.5558360815048218, 0.2755777835845947), ('Sharpness', 0.4881928265094757, 0.21691159904003143)),
        (('Rotate', 0.3616902828216553, 0.18580017983913422), ('Contrast', 0.5613550543785095, 0.3083491921424866)),
        (('TranslateY', 0.0, 0.408305287361145), ('Brightness', 0.4716355502605438, 0.5204870104789734)),
        (('AutoContrast', 0.7991832494735718, 0.44347289204597473), ('Color', 0.4360397756099701, 0.36640283465385437)),
        (('Color', 0.9439005255699158, 0.25039201974868774), ('Brightness', 0.6770737767219543, 0.44653841853141785)),
        (('TranslateY', 0.6285494565963745, 0.395266592502594), ('Equalize', 0.8238864541053772, 0.2982426583766937)),
        (('Equalize', 0.46301358938217163, 0.7147184610366821), ('Posterize', 0.5021865367889404, 0.7205064296722412)),
        (('Color', 0.5189914703369141, 0.482077032327652), ('Sharpness', 0.19046853482723236, 0.39753425121307373)),
        (('Sharpness', 0.4223572611808777, 0.37934350967407227), ('Cutout', 0.5508846044540405, 0.2419460117816925)),
        (('ShearX', 0.744318962097168, 0.5582589507102966), ('TranslateX', 0.4841197729110718, 0.6740695834159851)),
        (('Invert', 0.3582773506641388, 0.5917970538139343), ('Brightness', 0.5021751523017883, 0.2252121865749359)),
        (('TranslateX', 0.3551332652568817, 0.3603559732437134), ('Posterize', 0.7993623614311218, 0.3243299722671509)),
        (('TranslateX', 0.47883617877960205, 0.356031209230423), ('Cutout', 0.6418997049331665, 0.6689953207969666)),
        (('Posterize', 0.30889445543289185, 0.03791777789592743), ('Contrast', 1.0, 0.0762958824634552)),
        (('Contrast', 0.4202372133731842, 0.25662222504615784), ('Cutout', 0.0, 0.44168394804000854)),
        (('Equalize', 0.15656249225139618, 0.6881861686706543), ('Brightness', 0.72562175989151, 0.177269846200943)),
        (('Contrast', 0.45150792598724365, 0.33532920479774475), ('Sharpness', 0.589333176612854, 0.27893581986427307)),
        (('TranslateX', 0.12946638464927673, 0.5427500009536743), ('Invert', 0.3318890929222107, 0.4762207269668579)),
        (('Rotate', 0.4988836646080017, 0.5838819742202759), ('Posterize', 1.0, 0.7428610324859619)),
        (('TranslateX', 0.5078659057617188, 0.4304893910884857), ('Rotate', 0.4633696377277374, 0.48235252499580383)),
        (('ShearX', 0.5783067941665649, 0.455081969499588), ('TranslateY', 0.32670140266418457, 0.30824044346809387)),
        (('Rotate', 1.0, 0.0), ('Equalize', 0.510175883769989, 0.37381383776664734)),
        (('AutoContrast', 0.25783753395080566, 0.5729542374610901), ('Cutout', 0.3359143137931824, 0.34972965717315674)),
        (('ShearX', 0.5556561350822449, 0.5526643991470337), ('Color', 0.5021030902862549, 0.5042688846588135)),
        (('ShearY', 0.4626863896846771, 0.08647401630878448), ('Posterize', 0.5513173341751099, 0.3414877951145172)),
    ),
    "svhn": (
        (('Solarize', 0.6144442558288574, 0.5266356468200684), ('Brightness', 0.6407432556152344, 0.49594756960868835)),
        (('ShearY', 0.5603815317153931, 0.5412482619285583), ('Sharpness', 0.6651169061660767, 0.5049636363983154)),
        (('AutoContrast', 0.6381033658981323, 0.4964789152145386), ('Posterize', 0.48855721950531006, 0.422171413898468)),
        (('Invert', 0.43413209915161133, 0.6199576258659363), ('Equalize', 0.29578277468681335, 0.5297484397888184)),
        (('Contrast', 0.4938320219516754, 0.5492982864379883), ('Color', 0.5132512450218201, 0.5783136487007141)),
        (('ShearX', 0.5763686299324036, 0.5030161142349243), ('Brightness', 0.5642024278640747, 0.5401291847229004)),
        (('Rotate', 0.42828381061553955, 0.5006870627403259), ('Contrast', 0.4703759551048279, 0.42430493235588074)),
        (('Brightness', 0.510947048664093, 0.5679713487625122), ('Cutout', 0.4846647381782532, 0.5044050216674805)),
        (('TranslateY', 0.6543954610824585, 0.46405279636383057), ('Rotate', 0.4259282052516937, 0.46405279636383057)),
        (('ShearY', 0.4125938415527344, 0.42883598804473877), ('Contrast', 0.4826575219631195, 0.4939113259315491)),
        (('ShearY', 0.5181029438972473, 0.37303897738456726), ('Brightness', 0.4268920421600342, 0.37303897738456726)),
        (('ShearY', 0.2554332911968231, 0.488460898399353), ('Posterize', 0.5154975652694702, 0.5595977902412415)),
        (('TranslateX', 0.6652320623397827, 0.3767608106136322), ('TranslateY', 0.4480351507663727, 0.42192813754081726)),
        (('Posterize', 0.6448476314544678, 0.4292587637901306), ('Sharpness', 0.6318501830101013, 0.5380985140800476)),
        (('Rotate', 0.47309818863868713, 0.5), ('Sharpness', 0.40288078784942627, 0.4530191421508789)),
        (('ShearX', 0.46573129296302795, 0.4571962058544159), ('Cutout', 0.5832347869873047, 0.5)),
        (('Rotate', 0.5847659111022949, 0.5309413075447083), ('Solarize', 0.4149461090564728, 0.4334002733230591)),
        (('Color', 0.36979031562805176, 0.4367675483226776), ('Brightness', 0.5150350332260132, 0.4127320945262909)),
        (('TranslateX', 0.49473315477371216, 0.46626225113868713), ('Posterize', 0.4864722192287445, 0.5235840082168579)),
        (('TranslateY', 0.5033610463142395, 0.4902884066104889), ('Solarize', 0.4999811351299286, 0.420960932970047)),
        (('TranslateY', 0.265391081571579, 0.5), ('Invert', 0.5603448748588562, 0.29043102264404297)),
        (('ShearY', 0.636258065700531, 0.5717220902442932), ('Rotate', 0.48708420991897583, 0.5717220902442932)),
        (('Invert', 0.48760682344436646, 0.5459234118461609), ('Contrast', 0.40973231196403503, 0.5)),
        (('ShearX', 0.5675588250160217, 0.48917657136917114), ('Color', 0.6019042134284973, 0.5)),
        (('Rotate', 0.5409624576568604, 0.5262851119041443), ('Equalize', 0.5241876244544983, 0.5)),
    ),
    "imagenet": (
        (('TranslateY', 0.8485236167907715, 0.6384843587875366), ('Contrast', 0.6994985342025757, 0.4658013582229614)),
        (('ShearX', 0.6867295503616333, 0.6413730978965759), ('Brightness', 0.5846965312957764, 0.4594041705131531)),
        (('Solarize', 0.32854214310646057, 0.5276699066162109), ('Contrast', 0.35618481040000916, 0.40267977118492126)),
        (('ShearY', 0.5445513129234314, 0.8130137920379639), ('Color', 0.6470239162445068, 0.6705710291862488)),
        (('Rotate', 0.5192075371742249, 0.2825779616832733), ('Invert', 0.550243616104126, 0.4626586139202118)),
        (('ShearY', 0.7560662031173706, 0.5509522557258606), ('AutoContrast', 0.6409668922424316, 0.4606546461582184)),
        (('TranslateX', 0.31624406576156616, 0.6743366122245789), ('Sharpness', 0.4453914165496826, 0.6102295517921448)),
        (('Brightness', 0.2804577350616455, 0.5395416021347046), ('Cutout', 0.292346328496933, 0.5346128344535828)),
        (('TranslateY', 0.26140129566192627, 0.3906748592853546), ('Brightness', 0.30170461535453796, 0.5674546360969543)),
        (('ShearX', 0.46454519033432007, 0.621078610420227), ('Rotate', 0.5081079006195068, 0.585682213306427)),
        (('TranslateY', 0.6333466172218323, 0.3763497471809387), ('Invert', 0.39652955532073975, 0.3273072838783264)),
        (('TranslateY', 0.49120470881462097, 0.3186573386192322), ('Equalize', 0.42822957038879395, 0.26451754570007324)),
        (('TranslateX', 0.3068506419658661, 0.46462544798851013), ('AutoContrast', 0.40107735991477966, 0.0)),
        (('ShearY', 0.574976921081543, 0.34980109333992004), ('Equalize', 0.4476233124732971, 0.16299982368946075)),
        (('Solarize', 0.7755236029624939, 0.6112682223320007), ('Brightness', 0.5702967047691345, 0.7999937534332275)),
        (('Color', 0.7510525584220886, 0.404958575963974), ('Cutout', 0.5368577837944031, 0.4658619165420532)),
        (('ShearX', 0.5083368420600891, 0.6662658452987671), ('Cutout', 0.36978110671043396, 0.4463765323162079)),
        (('TranslateX', 0.6763074994087219, 0.38640040159225464), ('Rotate', 0.4725652039051056, 0.163239985704422)),
        (('Rotate', 0.643989086151123, 0.5495110750198364), ('Sharpness', 0.6552684307098389, 0.7961348295211792)),
        (('TranslateY', 0.4652615785598755, 0.748457670211792), ('Sharpness', 0.6427830457687378, 0.5193099975585938)),
        (('AutoContrast', 0.2942410111427307, 0.5420864820480347), ('Posterize', 0.35267922282218933, 0.6994035243988037)),
        (('Invert', 0.5537762641906738, 0.48860815167427063), ('Equalize', 0.444082111120224, 0.7564548254013062)),
        (('TranslateX', 0.857695996761322, 0.2923051416873932), ('Contrast', 0.40830710530281067, 0.6012328267097473)),
        (('Invert', 0.27794185280799866, 0.4498332142829895), ('Posterize', 0.422256737947464, 0.336642324924469)),
        (('Posterize', 0.1463455855846405, 0.3278478980064392), ('Color', 0.49619558453559875, 0.5923987030982971)),
    ),
}

# Each operation's value range, from the authors' ``augment_list`` (Fast AutoAugment's).
RANGES: dict[str, tuple[float, float]] = {
    "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "TranslateX": (-0.45, 0.45), "TranslateY": (-0.45, 0.45),
    "Rotate": (-30.0, 30.0), "AutoContrast": (0.0, 1.0), "Invert": (0.0, 1.0), "Equalize": (0.0, 1.0),
    "Solarize": (0.0, 256.0), "Posterize": (4.0, 8.0), "Contrast": (0.1, 1.9), "Color": (0.1, 1.9),
    "Brightness": (0.1, 1.9), "Sharpness": (0.1, 1.9), "Cutout": (0.0, 0.2),
}
MIRRORED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})  # sign flipped with p = 1/2
CUTOUT_FILL = (125, 123, 114)  # the authors' Cutout colour; 123 (its luma) on other channel counts
CUTOUT_GRAY = 123


def _uniform() -> float:
    """One draw from U[0, 1) on torch's CPU stream (the one PerImagePolicy seeds)."""
    return float(torch.rand(()))


def value(name: str, level: float) -> float:
    """The authors' ``apply_augment``: the level clipped to [0, 1], mapped onto the range."""
    low, high = RANGES[name]
    return min(max(level, 0.0), 1.0) * (high - low) + low


def _shift(v: float) -> float:
    """PIL's affine with nearest sampling reads pixel floor(x + 0.5 + v) for output x: an
    integer shift of floor(v + 0.5) pixels."""
    return float(math.floor(v + 0.5))


def _affine(
    img: torch.Tensor, *, translate: tuple[float, float] = (0.0, 0.0), shear: tuple[float, float] = (0.0, 0.0)
) -> torch.Tensor:
    """PIL's affine transform about the origin, nearest pixel, 0 where nothing maps."""
    from torchvision.transforms.v2 import functional as F

    return F.affine(img, angle=0.0, translate=list(translate), scale=1.0, shear=list(shear), fill=[0.0],
                    center=[0.0, 0.0])


def _cutout(img: torch.Tensor, v: float) -> torch.Tensor:
    """The authors' ``Cutout``/``CutoutAbs``: side v·w; corners (x0, y0) = int(max(0, c − side/2)),
    (x1, y1) = min(size, x0 + side), drawn by PIL with both corners included."""
    if v <= 0:
        return img
    _, h, w = img.shape
    side = v * w
    cx = w + (1.0 - w) * _uniform()  # np.random.uniform(w): low = w, high = 1
    cy = h + (1.0 - h) * _uniform()
    x0, y0 = int(max(0.0, cx - side / 2.0)), int(max(0.0, cy - side / 2.0))
    x1, y1 = int(min(w, x0 + side)), int(min(h, y0 + side))
    out = img.clone()
    fill = CUTOUT_FILL if img.shape[0] == 3 else (CUTOUT_GRAY,) * img.shape[0]
    out[:, y0 : y1 + 1, x0 : x1 + 1] = torch.tensor(fill, dtype=img.dtype).view(-1, 1, 1)
    return out


def apply_op(img: torch.Tensor, name: str, level: float) -> torch.Tensor:
    """One operation on an 8-bit image (C, H, W) at ``level``, with the authors' random sign."""
    from torchvision.transforms.v2 import functional as F

    v = value(name, level)
    if name in MIRRORED and _uniform() > 0.5:
        v = -v
    _, h, w = img.shape
    if name == "ShearX":  # PIL (1, v, 0, 0, 1, 0): torchvision's shear angle atan(v) about the origin
        return _affine(img, shear=(math.degrees(math.atan(v)), 0.0))
    if name == "ShearY":
        return _affine(img, shear=(0.0, math.degrees(math.atan(v))))
    if name == "TranslateX":  # PIL (1, 0, v·w, 0, 1, 0) reads input x + v·w: content moves by −v·w
        return _affine(img, translate=(-_shift(v * w), 0.0))
    if name == "TranslateY":
        return _affine(img, translate=(0.0, -_shift(v * h)))
    if name == "Rotate":  # counter-clockwise about the centre, as PIL's rotate
        return F.rotate(img, angle=v, fill=[0.0])
    if name == "AutoContrast":
        return F.autocontrast(img)
    if name == "Invert":
        return F.invert(img)
    if name == "Equalize":
        return F.equalize(img)
    if name == "Solarize":  # PIL inverts pixels ≥ v; none when v > 255
        return img if v > 255 else F.solarize(img, threshold=v)
    if name == "Posterize":
        return F.posterize(img, bits=int(v))
    if name == "Contrast":
        return F.adjust_contrast(img, contrast_factor=v)
    if name == "Color":
        return F.adjust_saturation(img, saturation_factor=v) if img.shape[0] == 3 else img
    if name == "Brightness":
        return F.adjust_brightness(img, brightness_factor=v)
    if name == "Sharpness":
        return F.adjust_sharpness(img, sharpness_factor=v)
    if name == "Cutout":
        return _cutout(img, v)
    raise ValueError(f"unknown DADA operation {name!r}; known: {', '.join(RANGES)}")


class DadaPolicy:
    """A DADA policy on one image in [0, 1] (C, H, W): one sub-policy drawn uniformly, each
    operation applied with its probability (the authors' ``Augmentation``)."""

    def __init__(self, policy: str):
        if policy not in POLICIES:
            raise ConfigError(f"dada_policy must be one of {', '.join(DADA_POLICY_NAMES)} (the policies the DADA authors "
                              f"published); got {policy!r}.")
        self.name, self.sub_policies = policy, POLICIES[policy]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        index = int(torch.randint(len(self.sub_policies), ()))
        img: torch.Tensor | None = None
        for name, probability, level in self.sub_policies[index]:
            if _uniform() > probability:
                continue
            if img is None:
                img = image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
            img = apply_op(img, name, level)
        return image if img is None else img.to(image.dtype).div_(255.0)

    def __repr__(self) -> str:
        return f"DadaPolicy({self.name!r})"


@AUGMENTS.register(
    "dada",
    "DADA: a searched policy the authors published (dada_policy: cifar10 (default), cifar100, svhn or imagenet), "
    "one random sub-policy of two operations per image, each with its searched probability and magnitude; "
    "torchvision's operations in 8 bits",
    paper="Li et al. 2020, arXiv:2003.03780 (policies: VDIGPKU/DADA, fast-autoaugment/FastAutoAugment/genotype.py)",
    options=(
        Option("dada_policy", str, "cifar10", "the searched policy (dataset it was searched on)", choices=DADA_POLICY_NAMES),
    ),
)
def dada(context: AugmentContext, *, dada_policy: str) -> Augment:
    return LabelPreserving(PerImagePolicy(DadaPolicy(dada_policy), context.low, context.high))
