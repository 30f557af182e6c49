"""What a reader raises for a file it cannot decode (the message is the reason the report shows),
and the size a reader refuses before decoding."""


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message is the reason shown in the report."""


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise UnreadableImage(
            f"{width} x {height} px ({width * height / 1e6:.1f} Mpx) is above max_image_pixels ({max_pixels / 1e6:g} Mpx): "
            "refused before decoding; raise max_image_pixels if it is a real radiograph"
        )
