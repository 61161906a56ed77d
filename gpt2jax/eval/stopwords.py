"""Stop-word lists for the stop-word-filtered LAMBADA protocol (`lambada.py`).

`NLTK_ENGLISH` is NLTK's English stop-word list, the 179 words of the `stopwords` corpus
file `corpora/stopwords/english` that `nltk.corpus.stopwords.words("english")` returns,
copied here in NLTK's order because the corpus is a separate download (`nltk.download(
"stopwords")`) that tests cannot rely on. It is lower case and includes NLTK's contraction
fragments ("don", "don't", "s", "t", "ll", ...).

The GPT-2 paper (Radford et al. 2019, section 3.3) reports LAMBADA accuracy "with a stop-word
filter" but OpenAI did not publish which list or how it was applied, so any list is an
approximation of their protocol; this one is named so a result can be reproduced.
"""

NLTK_ENGLISH: frozenset[str] = frozenset((
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "you're", "you've",
    "you'll", "you'd", "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself",
    "she", "she's", "her", "hers", "herself", "it", "it's", "its", "itself", "they", "them",
    "their", "theirs", "themselves", "what", "which", "who", "whom", "this", "that", "that'll",
    "these", "those", "am", "is", "are", "was", "were", "be", "been", "being", "have", "has",
    "had", "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if", "or",
    "because", "as", "until", "while", "of", "at", "by", "for", "with", "about", "against",
    "between", "into", "through", "during", "before", "after", "above", "below", "to", "from",
    "up", "down", "in", "out", "on", "off", "over", "under", "again", "further", "then", "once",
    "here", "there", "when", "where", "why", "how", "all", "any", "both", "each", "few", "more",
    "most", "other", "some", "such", "no", "nor", "not", "only", "own", "same", "so", "than",
    "too", "very", "s", "t", "can", "will", "just", "don", "don't", "should", "should've", "now",
    "d", "ll", "m", "o", "re", "ve", "y", "ain", "aren", "aren't", "couldn", "couldn't", "didn",
    "didn't", "doesn", "doesn't", "hadn", "hadn't", "hasn", "hasn't", "haven", "haven't", "isn",
    "isn't", "ma", "mightn", "mightn't", "mustn", "mustn't", "needn", "needn't", "shan", "shan't",
    "shouldn", "shouldn't", "wasn", "wasn't", "weren", "weren't", "won", "won't", "wouldn",
    "wouldn't",
))
