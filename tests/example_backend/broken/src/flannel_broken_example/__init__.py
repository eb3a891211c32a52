"""A plugin that fails to import, as a plugin with a missing dependency would."""

raise ImportError("flannel_broken_example needs the 'frobnicator' module, which is missing")
