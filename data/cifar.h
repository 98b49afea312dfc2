// CIFAR-10 and CIFAR-100 in their official binary formats
// (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version").
#pragma once

#include <string>

#include "data/source.h"
#include "data/transforms.h"

namespace s2h::data {

// Loads a CIFAR split into memory (u8 HWC images); read() applies `tf`.
//   variant 10:  root holds data_batch_1.bin .. data_batch_5.bin (train) and
//                test_batch.bin (test); each record is 1 label byte and 3072
//                pixel bytes (1024 R, 1024 G, 1024 B, each 32x32 row-major).
//   variant 100: root holds train.bin and test.bin; each record is 1 coarse
//                label byte, 1 fine label byte and 3072 pixel bytes. Labels are
//                the 100 fine classes, or the 20 coarse ones with coarse = true.
// root may also be the folder the archive was extracted in (holding
// cifar-10-batches-bin/ or cifar-100-binary/). split: "train" or "test". The
// source's name is e.g. "cifar10/train"; its class names (class_names() in
// data/image.h) are the official ones. Throws s2h::Error naming the file: a
// missing file (listing the files the folder should hold), a size that is not
// a whole number of records, a label out of range (with the record number).
SourcePtr load_cifar_binary(const std::string& root, int variant, const std::string& split, const ImageTransform& tf,
                            bool coarse = false);

}  // namespace s2h::data
