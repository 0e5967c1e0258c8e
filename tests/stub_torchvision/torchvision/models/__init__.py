from torch import nn

from .. import CALLS


class _ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        from llp.train.model import ResNet18Trunk
        body = ResNet18Trunk()
        for name, module in body.named_children():
            setattr(self, name, module)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(weights=None):
    CALLS["resnet18"] += 1
    return _ResNet()
