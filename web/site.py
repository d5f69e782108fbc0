"""The upload site's pages."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("site", __name__)


@bp.get("/")
def home():
    """The landing page: what this service is and how to reach its API."""
    return render_template("home.html")
