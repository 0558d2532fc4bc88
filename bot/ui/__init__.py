"""What users see: status text, embeds, buttons."""
