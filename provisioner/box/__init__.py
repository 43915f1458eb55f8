"""The lab box: a Debian 12 libvirt Vagrant box built offline with debootstrap, cached by recipe hash."""

from provisioner.box.build import Box, box_dir, build, cached
from provisioner.box.recipe import BOX_NAME, RECIPE, Recipe

__all__ = ["BOX_NAME", "RECIPE", "Box", "Recipe", "box_dir", "build", "cached"]
