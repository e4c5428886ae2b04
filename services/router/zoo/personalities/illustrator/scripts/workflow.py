# Predefined: prompt, inputs, conditioning, parameters, personality, binding, model.
image_prompt = generate_text(
    prompt,
    system=conditioning,
    max_tokens=parameters.get("max_tokens", 60),
    binding=binding,
).strip()
print(f"image prompt: {image_prompt}")
images = generate_image(image_prompt or prompt)
[image_prompt, *images]
