// Datasets of encoded image files (JPEG, PNG): a folder per class, and Tiny
// ImageNet in its original layout. The files are read into memory (encoded)
// and their headers checked at load; read() decodes and transforms.
#pragma once

#include <string>
#include <vector>

#include "data/image.h"
#include "data/source.h"
#include "data/transforms.h"

namespace s2h::data {

// dir/<class>/<file>.{jpg,jpeg,png} (extension case-insensitive; other files,
// subfolders of class folders and hidden entries are ignored). The class index
// of a folder is its position among the sorted class-folder names, or in
// `classes` when given: pass the train split's class_names(...) when loading
// the test split so that both agree. Files are taken in sorted order. Throws
// s2h::Error: no class folders, an empty class folder or one that is not in
// `classes` (naming the folder), a file that cannot be read or whose header is
// not a valid JPEG/PNG (naming the file). `name` names the source in messages
// (e.g. "cifar10-jpeg/train").
SourcePtr load_image_folder(const std::string& dir, const ImageTransform& tf, const std::string& name,
                            const std::vector<std::string>& classes = {});

// The class-folder names of dir, sorted (hidden entries ignored): the classes
// load_image_folder gives a folder when none are passed. Throws naming dir when
// it is missing or holds no class folder.
std::vector<std::string> image_folder_classes(const std::string& dir);

// Tiny ImageNet (http://cs231n.stanford.edu/tiny-imagenet-200.zip) as
// extracted: root/wnids.txt lists the 200 classes (the class index is the line
// order), root/train/<wnid>/images/*.JPEG, and root/val/val_annotations.txt
// (tab-separated: file, wnid, x, y, w, h) with the files in root/val/images/.
// split: "train" or "val". Class names are the wnids. Throws s2h::Error naming
// the file (and line for the text files): a missing file or folder, a short
// annotation line, an unknown wnid, a bad image header.
SourcePtr load_tiny_imagenet(const std::string& root, const std::string& split, const ImageTransform& tf);

// A source over encoded image files already listed (paths[i] has class
// labels[i] < names.size()): the files are read with a few threads and their
// headers checked; the load functions above end here.
SourcePtr load_image_files(const std::string& name, std::vector<std::string> paths, std::vector<int64_t> labels,
                           std::vector<std::string> names, const ImageTransform& tf);

}  // namespace s2h::data
