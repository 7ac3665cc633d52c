"""Write the embedded synthetic scene to disk in the custom layout (a complete example of the format).

    python -m flow3d.preprocess.synthetic --out-dir data/synthetic_example

(The same as ``python -m flow3d.data.synthetic``, without runpy's warning about re-importing a module
of an already imported package.)
"""

from flow3d.data.synthetic import main

if __name__ == "__main__":
    main()
