"""Built-in plugins of the stockade distribution, registered like any third party's."""
