"""Tools that build the course itself (not used by the method modules):

- :mod:`mechlab.course.exercises`: ``solutions/`` -> ``exercises/``, setup cells and Colab badges
- :mod:`mechlab.course.run`: run notebooks headless (``make course``), or refresh committed outputs
- :mod:`mechlab.course.colab`: the setup cell's code and the one repository setting
- :mod:`mechlab.course.organism_card`: measures the organism and writes its model card (``python -m
  mechlab.course.organism_card``)
- :mod:`mechlab.course.site`: the course site (``make site``), from the pages of :mod:`~mechlab.course.site_render`
  (notebook -> page, slides), :mod:`~mechlab.course.site_notes` (instructor notes),
  :mod:`~mechlab.course.site_schedule` (workshop plans) and :mod:`~mechlab.course.site_timing` (cell times);
  :mod:`mechlab.course.site_check` checks it in headless chromium (``make site-test``)
"""
