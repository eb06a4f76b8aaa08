"""Write examples/wine.csv and examples/wine_new.csv from scikit-learn's wine data (shipped with
scikit-learn, no download): 178 Italian wines, 13 measurements each, from three cultivars. The
two CSVs are committed; this script says where they came from and makes them again.

    python examples/make_wine_csv.py
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_wine

HERE = Path(__file__).resolve().parent
# scikit-learn's class_0, class_1, class_2 are the cultivars of the original study (Forina et al.)
CULTIVARS = np.array(["barolo", "grignolino", "barbera"])


def main() -> None:
    wine = load_wine(as_frame=True)
    frame = wine.data.copy()
    frame.insert(0, "cultivar", CULTIVARS[wine.target.to_numpy()])
    new = np.sort(np.random.default_rng(7).choice(len(frame), size=5, replace=False))
    frame.drop(index=new).to_csv(HERE / "wine.csv", index=False)
    # five bottles the run never sees, without their cultivar and with an id column of their own
    bottles = frame.loc[new].drop(columns="cultivar")
    bottles.insert(0, "bottle", [f"B-{i + 101}" for i in range(len(bottles))])
    bottles.to_csv(HERE / "wine_new.csv", index=False)


if __name__ == "__main__":
    main()
