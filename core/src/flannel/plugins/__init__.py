"""The plugin host (:mod:`flannel.plugins.host`) and the built-in alloc backend."""
