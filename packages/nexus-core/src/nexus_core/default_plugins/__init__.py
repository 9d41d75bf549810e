"""Built-in plugins: features of the core that register themselves like any third-party plugin."""
