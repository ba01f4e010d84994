"""Long-context distillation (ImcQA): a teacher reader with long context teaches a student with short context.

``loss`` holds the loss functions (pure, tested). Not a plugin: it registers no components.
"""
