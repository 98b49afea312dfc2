// Everything a user of the engine needs, in one include.
#pragma once

#include "engine/autograd.h"
#include "engine/layers.h"
#include "engine/module.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "engine/tensor.h"
